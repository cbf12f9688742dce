"""Run a grid of training runs unattended: train, then evaluate, every cell; then premem.py analyze.

    python sweep.py list                            # the grid files in grids/ and their cell counts
    python sweep.py show GRID                       # every cell: run folder and the keys it sets
    python sweep.py status GRID                     # each cell: done / partial / pending
    python sweep.py run GRID [--gpus 0,1,2,3] [--launcher "accelerate launch --num_processes 2"]
                             [--only NAME ...] [--no-analyze] [--stop-on-error]

A grid file (grids/*.yaml) names a base config (a configs/ file), the folder its runs go to, keys common
to every cell, and one entry per cell with the keys that cell changes (learning_rate, num_epochs,
subset, ...). Each cell is one run folder, named from its task, model, epochs, data size and learning
rate: RUNS_ROOT/<task>_<model>_<E>ep_<size>_lr<LR> (e.g. gsm8k_llama3-8b_3ep_full_lr2e-5).

`run` goes through the cells in order; for each one it runs `train.py` and then `evaluate.py` as
subprocesses (their output goes to RUNS_ROOT/_sweep/logs/<cell>.log) and it skips a cell that is done
(train_summary.json and every record file present). A half-done cell is resumed: train.py continues from
its last complete checkpoint and evaluate.py only writes the records that are missing. So after an
interruption (a kill, a reboot, a preempted job) the same command continues where it stopped. At the end
it runs `premem.py analyze` over the finished cells (RUNS_ROOT/analysis: Figures 1, 3, 4 and R^2).

Several GPUs, two ways:
  --gpus 0,1,2,3          one cell per GPU: up to 4 cells at once, each subprocess sees only its GPU
                          (CUDA_VISIBLE_DEVICES); the best use of GPUs for a grid of independent runs.
  --launcher "accelerate launch --num_processes 4"
                          each cell's train.py runs data-parallel and evaluate.py sharded over 4
                          processes (GPUs), one cell after another.

Timings (seconds of train and evaluate per cell) are appended to RUNS_ROOT/_sweep/timings.jsonl.
Exit status: 0 when every selected cell is done, 1 when a cell failed, 2 on a bad grid file.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

import config as config_mod
import records

ROOT = Path(__file__).resolve().parent
GRIDS_DIR = ROOT / "grids"
SWEEP_DIR = "_sweep"  # inside RUNS_ROOT: cell configs, logs, timings, lock
GRID_KEYS = {
    "name": "short name of the grid",
    "description": "what the grid reproduces",
    "source": "where the cells come from (paper table, file)",
    "notes": "anything a user should know (unverified cells, ...)",
    "base": "config file every cell starts from (relative to the repo root or to the grid file)",
    "model_name": "short model name used in run folder names (default: from the model key)",
    "runs_root": "folder the cell run folders go to (relative to the current folder)",
    "common": "config keys set in every cell",
    "cells": "list of cells: config keys each cell sets (plus optional 'name' and 'note')",
    "evaluate_args": "extra evaluate.py arguments for every cell, e.g. [--train-examples, 1000]",
    "analyze_args": "extra premem.py analyze arguments, e.g. [--threshold, -2.3]",
}


class GridError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------------
# grid files

def fmt_lr(lr: float) -> str:
    """2e-05 -> '2e-5', 0.0002 -> '2e-4', 1.5e-4 -> '1.5e-4'."""
    mant, exp = f"{float(lr):e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def fmt_epochs(e) -> str:
    return str(int(e)) if float(e).is_integer() else f"{float(e):g}"


def model_short_name(model: str) -> str:
    name = model.split(":")[-1].rstrip("/").split("/")[-1]
    if name.endswith(".gguf"):
        name = name[:-5]
    return name.lower()


def cell_name(cfg: dict, model_name: str, cell_keys=()) -> str:
    """<task>_<model>_<E>ep_<size>_lr<LR>; the size gets the subset_fraction when the cell itself sets one."""
    size = cfg["subset"]
    if "subset_fraction" in cell_keys and cfg.get("subset_fraction") is not None:
        size += "-" + str(cfg["subset_fraction"]).replace("/", "of")
    task = cfg["task"] + ("-l" + "".join(map(str, cfg["math_levels"])) if cfg.get("math_levels") else "")
    return f"{task}_{model_name}_{fmt_epochs(cfg['num_epochs'])}ep_{size}_lr{fmt_lr(cfg['learning_rate'])}"


def _cell_lines(text: str) -> list[int]:
    """1-based line number of each entry of the top-level 'cells' list (for error messages)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return []
    if not isinstance(node, yaml.MappingNode):
        return []
    for k, v in node.value:
        if getattr(k, "value", None) == "cells" and isinstance(v, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in v.value]
    return []


def resolve_grid_path(grid) -> Path:
    p = Path(grid)
    if p.exists():
        return p
    for cand in (GRIDS_DIR / grid, GRIDS_DIR / f"{grid}.yaml"):
        if cand.exists():
            return cand
    known = ", ".join(sorted(q.stem for q in GRIDS_DIR.glob("*.yaml"))) or "none"
    raise GridError(f"grid file {grid} does not exist (grids in {GRIDS_DIR}: {known})")


def load_grid(grid, runs_root=None) -> dict:
    """Read and check a grid file. Returns {name, path, runs_root, cells: [{name, index, line, cfg, run_dir}], ...}.

    Every cell's config goes through config.py's checks; an error names the grid file, the cell's line
    and the key."""
    path = resolve_grid_path(grid)
    text = path.read_text()
    try:
        g = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise GridError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(g, dict):
        raise GridError(f"{path}: expected a mapping with keys {', '.join(GRID_KEYS)}, got {type(g).__name__}")
    unknown = [k for k in g if k not in GRID_KEYS]
    if unknown:
        raise GridError(f"{path}: unknown grid key '{unknown[0]}'; valid keys: {', '.join(GRID_KEYS)}")
    for k in ("base", "cells"):
        if k not in g:
            raise GridError(f"{path}: missing key '{k}' ({GRID_KEYS[k]})")
    cells = g["cells"] or []
    if not isinstance(cells, list):
        raise GridError(f"{path}: 'cells' must be a list of mappings, got {type(cells).__name__}")
    base = Path(g["base"])
    if not base.is_absolute():
        base = (ROOT / base) if (ROOT / base).exists() else (path.parent / base)
    if not base.exists():
        raise GridError(f"{path}: base config {g['base']} does not exist")
    try:
        base_cfg = config_mod.load_config(base)
    except config_mod.ConfigError as e:
        raise GridError(f"{path}: base config: {e}") from None
    common = g.get("common") or {}
    if not isinstance(common, dict):
        raise GridError(f"{path}: 'common' must be a mapping of config keys, got {type(common).__name__}")
    for k in ("evaluate_args", "analyze_args"):
        v = g.get(k) or []
        if not isinstance(v, list) or not all(isinstance(x, (str, int, float)) for x in v):
            raise GridError(f"{path}: '{k}' must be a list of command-line words, e.g. [--train-examples, 1000]")
        g[k] = [str(x) for x in v]
    model_name = g.get("model_name")
    root = Path(runs_root or g.get("runs_root") or f"runs/grids/{path.stem}")
    lines = _cell_lines(text)
    out, seen = [], {}
    for i, cell in enumerate(cells):
        where = f"{path} line {lines[i]} (cell {i + 1})" if i < len(lines) else f"{path} (cell {i + 1})"
        if not isinstance(cell, dict):
            raise GridError(f"{where}: a cell must be a mapping of config keys, got {cell!r}")
        cell = dict(cell)
        name = cell.pop("name", None)
        note = cell.pop("note", None)
        if "run_dir" in cell or "run_dir" in common:
            raise GridError(f"{where}: 'run_dir' is set by the sweep (runs_root/<cell name>); remove it")
        cfg = dict(base_cfg)
        try:
            for k, v in common.items():
                cfg[k] = config_mod.check_value(k, v, f"{path} common")
            for k, v in cell.items():
                cfg[k] = config_mod.check_value(k, v, where)
            config_mod.validate(cfg)
        except config_mod.ConfigError as e:
            raise GridError(str(e) if str(e).startswith(str(path)) else f"{where}: {e}") from None
        name = str(name) if name else cell_name(cfg, model_name or model_short_name(cfg["model"]), cell)
        if name in seen:
            raise GridError(f"{where}: cell name {name} is the same as cell {seen[name] + 1}'s; give one of them "
                            f"a 'name:' or make them differ in task, model, epochs, size or learning rate")
        seen[name] = i
        cfg["run_dir"] = str(root / name)
        out.append({"name": name, "index": i, "line": lines[i] if i < len(lines) else None, "cfg": cfg,
                    "run_dir": root / name, "sets": cell, "note": note})
    return {"name": g.get("name") or path.stem, "path": path, "runs_root": root, "cells": out, "common": common,
            "description": g.get("description", ""), "source": g.get("source", ""), "notes": g.get("notes", ""),
            "evaluate_args": g["evaluate_args"], "analyze_args": g["analyze_args"]}


# ----------------------------------------------------------------------------------------------------
# status

def expected_records(cfg: dict, run: Path, evaluate_args=()) -> list[Path]:
    """The record files evaluate.py writes for this run, given its complete checkpoints."""
    from train import complete_checkpoints

    splits, variants = list(cfg["eval_splits"]), list(cfg["eval_variants"])
    no_base = not cfg["eval_base_model"]
    args = list(evaluate_args)
    for flag, target in (("--splits", splits), ("--variants", variants)):
        if flag in args:
            j = args.index(flag) + 1
            target.clear()
            while j < len(args) and not args[j].startswith("--"):
                target.append(args[j])
                j += 1
    no_base = no_base or "--no-base" in args
    steps = ([] if no_base else [0]) + [int(p.name.split("-")[1]) for p in complete_checkpoints(run)]
    return [records.record_path(run, s, sp, v) for s in steps for sp in splits for v in variants]


def cell_status(cell: dict, evaluate_args=()) -> dict:
    """done (trained, every record present) / partial (something started) / pending (nothing yet)."""
    from train import complete_checkpoints

    run = Path(cell["run_dir"])
    trained = (run / "train_summary.json").exists()
    ckpts = complete_checkpoints(run) if run.is_dir() else []
    want = expected_records(cell["cfg"], run, evaluate_args) if run.is_dir() else []
    have = [p for p in want if p.exists()]
    started = run.is_dir() and ((run / "config.yaml").exists() or ckpts or any(run.glob("checkpoint-*")))
    state = "done" if trained and len(have) == len(want) else ("partial" if started else "pending")
    return {"cell": cell["name"], "state": state, "trained": trained, "checkpoints": len(ckpts),
            "records": len(have), "records_expected": len(want) if trained else None}


def grid_status(grid: dict) -> list[dict]:
    return [cell_status(c, grid["evaluate_args"]) for c in grid["cells"]]


def print_status(grid: dict, rows: list[dict], out=sys.stdout) -> None:
    w = max([len(r["cell"]) for r in rows] + [4])
    print(f"grid {grid['name']} ({grid['path']}): {len(rows)} cells in {grid['runs_root']}", file=out)
    print(f"{'cell':{w}s}  {'state':8s} {'trained':7s} {'ckpts':>5s} {'records':>9s}", file=out)
    for r in rows:
        rec = f"{r['records']}/{r['records_expected']}" if r["records_expected"] is not None else f"{r['records']}/?"
        print(f"{r['cell']:{w}s}  {r['state']:8s} {'yes' if r['trained'] else 'no':7s} {r['checkpoints']:>5d} "
              f"{rec:>9s}", file=out)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "partial", "pending")}
    print(f"done {counts['done']}, partial {counts['partial']}, pending {counts['pending']}", file=out)


# ----------------------------------------------------------------------------------------------------
# running

def schedule(items: list, slots: list, work, on_event=None) -> dict:
    """Run work(item, slot) for every item, at most one item per slot at a time, len(slots) at once.

    Items are started in order as slots free up. Returns {item_index: result}. `work` must not raise
    (it reports failure in its result). This is the 'one cell per GPU' scheduler: a slot is a GPU id."""
    results = {}
    free: queue.Queue = queue.Queue()
    for s in slots:
        free.put(s)
    lock = threading.Lock()
    threads = []

    def run_one(i, item, slot):
        try:
            r = work(item, slot)
        finally:
            free.put(slot)
        with lock:
            results[i] = r
        if on_event:
            on_event("end", i, slot)

    for i, item in enumerate(items):
        slot = free.get()  # blocks until a slot is free
        if on_event:
            on_event("start", i, slot)
        t = threading.Thread(target=run_one, args=(i, item, slot), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return results


def _die_with_parent():
    """In the child: get SIGKILL when the sweep process dies, so a killed sweep leaves no orphan
    trainer writing into a run folder (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _run_logged(cmd: list[str], log_path: Path, env: dict) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}   # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        p = subprocess.Popen(cmd, cwd=os.getcwd(), env=env, stdout=f, stderr=subprocess.STDOUT,
                             preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        try:
            return p.wait()
        except BaseException:
            p.kill()
            p.wait()
            raise


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_cell(grid: dict, cell: dict, slot=None, launcher: list[str] | None = None, say=print) -> dict:
    """Train, then evaluate, one cell (each step skipped when already done). Returns a timing row."""
    sweep = grid["runs_root"] / SWEEP_DIR
    cfg_path = sweep / "cells" / f"{cell['name']}.yaml"
    records.atomic_write_text(cfg_path, yaml.safe_dump(cell["cfg"], sort_keys=False))
    log_path = sweep / "logs" / f"{cell['name']}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(slot)
    py = launcher if launcher else [sys.executable]
    where = f" [GPU {slot}]" if slot is not None else ""
    row = {"cell": cell["name"], "slot": slot, "train_s": None, "evaluate_s": None, "ok": False,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    st = cell_status(cell, grid["evaluate_args"])
    if not st["trained"]:
        say(f"  {cell['name']}{where}: training ({'resuming, ' + str(st['checkpoints']) + ' checkpoints done' if st['state'] == 'partial' else 'from scratch'}) ...")
        t0 = time.time()
        rc = _run_logged([*py, str(ROOT / "train.py"), str(cfg_path)], log_path, env)
        row["train_s"] = round(time.time() - t0, 1)
        if rc != 0:
            row["error"] = f"train.py exited with {rc}"
            say(f"  {cell['name']}: train.py FAILED (exit {rc}); last lines of {log_path}:\n{_tail(log_path)}")
            return row
    say(f"  {cell['name']}{where}: evaluating ...")
    t0 = time.time()
    rc = _run_logged([*py, str(ROOT / "evaluate.py"), str(cell["run_dir"]), *grid["evaluate_args"]], log_path, env)
    row["evaluate_s"] = round(time.time() - t0, 1)
    if rc != 0:
        row["error"] = f"evaluate.py exited with {rc}"
        say(f"  {cell['name']}: evaluate.py FAILED (exit {rc}); last lines of {log_path}:\n{_tail(log_path)}")
        return row
    row["ok"] = cell_status(cell, grid["evaluate_args"])["state"] == "done"
    if not row["ok"]:
        row["error"] = "evaluate.py finished but records are missing"
    return row


class SweepLock:
    """One sweep per grid folder at a time (an flock on RUNS_ROOT/_sweep/lock)."""

    def __init__(self, root: Path):
        self.path = root / SWEEP_DIR / "lock"

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.close()
            raise GridError(f"another sweep is running on {self.path.parent.parent} (lock {self.path})") from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"{os.getpid()}\n")
        self.f.flush()
        return self

    def __exit__(self, *exc):
        self.f.close()


def run_grid(grid: dict, gpus=None, launcher=None, only=None, analyze=True, stop_on_error=False,
             say=print) -> int:
    cells = grid["cells"]
    if not cells:
        raise GridError(f"{grid['path']}: the grid has no cells. {grid['notes']}".strip())
    if only:
        unknown = [n for n in only if n not in {c["name"] for c in cells}]
        if unknown:
            raise GridError(f"--only {unknown[0]}: no such cell in {grid['path']} (cells: "
                            + ", ".join(c["name"] for c in cells) + ")")
        cells = [c for c in cells if c["name"] in set(only)]
    root = grid["runs_root"]
    with SweepLock(root):
        status = {r["cell"]: r for r in grid_status(grid)}
        todo = [c for c in cells if status[c["name"]]["state"] != "done"]
        say(f"grid {grid['name']}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run "
            f"({'one cell per GPU on ' + ','.join(map(str, gpus)) if gpus else 'one after another'}) -> {root}")
        timings = root / SWEEP_DIR / "timings.jsonl"
        failed = []
        stop = threading.Event()
        tlock = threading.Lock()
        n_done = [0]

        def work(cell, slot):
            if stop.is_set():
                return {"cell": cell["name"], "ok": False, "error": "not started (--stop-on-error)"}
            t0 = time.time()
            try:
                row = run_cell(grid, cell, slot, launcher, say)
            except Exception as e:  # a bug or an OS error: report it, carry on with the other cells
                row = {"cell": cell["name"], "ok": False, "error": f"{type(e).__name__}: {e}"}
            row["total_s"] = round(time.time() - t0, 1)
            with tlock:
                n_done[0] += 1
                with open(timings, "a") as f:
                    f.write(json.dumps(row) + "\n")
                if row["ok"]:
                    say(f"[{n_done[0]}/{len(todo)}] {cell['name']}: done in {row['total_s']:.0f} s "
                        f"(train {row.get('train_s') or 0:.0f} s, evaluate {row.get('evaluate_s') or 0:.0f} s)")
                else:
                    failed.append(cell["name"])
                    say(f"[{n_done[0]}/{len(todo)}] {cell['name']}: FAILED: {row.get('error')}")
                    if stop_on_error:
                        stop.set()
            return row

        schedule(todo, list(gpus) if gpus else [None], work)
        rows = grid_status(grid)
        print_status(grid, rows, out=sys.stdout)
        done = [r["cell"] for r in rows if r["state"] == "done"]
        if analyze and done:
            out = root / "analysis"
            runs = [str(root / n) for n in done]
            say(f"premem.py analyze over {len(done)} finished cells -> {out}")
            cmd = [sys.executable, str(ROOT / "premem.py"), "analyze", *runs, "--out", str(out), *grid["analyze_args"]]
            rc = subprocess.run(cmd).returncode
            if rc != 0:
                hint = ("" if any(a.startswith("--threshold") for a in grid["analyze_args"]) else
                        "; if the threshold could not be calibrated (test accuracy that does not vary), set "
                        "analyze_args: [--threshold, \"-2.3\"] in the grid file for a fixed threshold")
                say(f"premem.py analyze exited with {rc}{hint}")
                return 1
        return 1 if failed or len(done) < len(grid["cells"]) and not only else 0


# ----------------------------------------------------------------------------------------------------
# CLI

def parse_gpus(text: str) -> list[str]:
    ids = [x.strip() for x in text.split(",") if x.strip()]
    if not ids or len(set(ids)) != len(ids):
        raise GridError(f"--gpus {text!r}: expected distinct GPU ids separated by commas, e.g. 0,1,2,3")
    return ids


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the grid files in grids/")
    for name, h in (("show", "every cell's run folder and keys"), ("status", "each cell: done / partial / pending")):
        p = sub.add_parser(name, help=h)
        p.add_argument("grid", help="grid file (or its name in grids/)")
        p.add_argument("--runs-root", help="override the grid's runs_root")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    r = sub.add_parser("run", help="train + evaluate every cell not done, then premem.py analyze")
    r.add_argument("grid", help="grid file (or its name in grids/)")
    r.add_argument("--runs-root", help="override the grid's runs_root")
    r.add_argument("--gpus", help="one cell per GPU: comma-separated GPU ids, e.g. 0,1,2,3")
    r.add_argument("--launcher", help="command that starts train.py/evaluate.py instead of python, e.g. "
                                      "\"accelerate launch --num_processes 2\" (data parallel within a cell)")
    r.add_argument("--only", nargs="+", metavar="CELL", help="run only these cells")
    r.add_argument("--no-analyze", action="store_true", help="skip premem.py analyze at the end")
    r.add_argument("--stop-on-error", action="store_true", help="start no new cell after a failure")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "list":
            for p in sorted(GRIDS_DIR.glob("*.yaml")):
                try:
                    g = load_grid(p)
                    print(f"{p.relative_to(ROOT)}: {len(g['cells'])} cells -> {g['runs_root']}  {g['description']}")
                except GridError as e:
                    print(f"{p.relative_to(ROOT)}: ERROR {e}")
            return 0
        grid = load_grid(a.grid, a.runs_root)
        if a.cmd == "show":
            print(f"grid {grid['name']} ({grid['path']}): {len(grid['cells'])} cells -> {grid['runs_root']}")
            for k in ("description", "source", "notes"):
                if grid[k]:
                    print(f"{k}: {str(grid[k]).strip()}")
            if grid["common"]:
                print("every cell: " + ", ".join(f"{k}={v}" for k, v in grid["common"].items()))
            for c in grid["cells"]:
                print(f"  {c['name']}: " + ", ".join(f"{k}={v}" for k, v in c["sets"].items())
                      + (f"  ({c['note']})" if c["note"] else ""))
            return 0
        if a.cmd == "status":
            rows = grid_status(grid)
            if a.json:
                print(json.dumps(rows, indent=2))
            else:
                print_status(grid, rows)
            return 0
        launcher = shlex.split(a.launcher) if a.launcher else None
        if launcher and a.gpus:
            print("note: --gpus with --launcher: each cell's processes share the one GPU it is given", file=sys.stderr)
        return run_grid(grid, gpus=parse_gpus(a.gpus) if a.gpus else None, launcher=launcher, only=a.only,
                        analyze=not a.no_analyze, stop_on_error=a.stop_on_error,
                        say=lambda m: print(m, flush=True))
    except GridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
