"""Running a grid unattended: train, then evaluate, every cell; then premem.py analyze.

For each cell not done, train.py and then evaluate.py run as subprocesses (the top-level scripts in the
repo root; their output goes to RUNS_ROOT/_sweep/logs/<cell>.log). A half-done cell is resumed: train.py
continues from its last complete checkpoint and evaluate.py writes only the records that are missing, so
after a kill the same call continues where it stopped. Cells go one after another, or one per GPU slot
(CUDA_VISIBLE_DEVICES) with `gpus`; a `launcher` (e.g. accelerate launch) replaces python for each script.
Timings per cell are appended to RUNS_ROOT/_sweep/timings.jsonl. One sweep per RUNS_ROOT at a time.

On a cluster each cell is one job (grid_slurm.py submits them): the job calls run_cell_job, the same
run_cell as here, and the analysis job calls analyze_done.
"""
from __future__ import annotations

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

from premem_kit.core import config
from premem_kit.core import files
from premem_kit.grids.grid import ANALYSIS_DIR, ROOT, SWEEP_DIR, GridError, cell_status, grid_status, print_status

TRAIN_SCRIPT = ROOT / "train.py"
EVALUATE_SCRIPT = ROOT / "evaluate.py"
PREMEM_SCRIPT = ROOT / "premem.py"


def sweep_lock(runs_root: Path) -> files.FileLock:
    """The lock that keeps a second sweep off the same RUNS_ROOT (RUNS_ROOT/_sweep/lock)."""
    return files.FileLock(Path(runs_root) / SWEEP_DIR / "lock", f"the sweep folder {runs_root}")


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


def run_logged(cmd: list[str], log_path: Path, env: dict) -> int:
    """Run cmd with stdout and stderr appended to log_path (after a `$ command` line); its exit status."""
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


def eval_overrides(grid: dict, cell: dict) -> list[str]:
    """key=value words for evaluate.py: the evaluation keys the grid file sets for this cell, so that an
    edit of them after training reaches the evaluation (the run's config.yaml keeps the trained values)."""
    keys = [k for k in config.EVAL_KEYS if k in grid["common"] or k in cell["sets"]]
    return [f"{k}={json.dumps(getattr(cell['cfg'], k))}" for k in keys]


def run_cell(grid: dict, cell: dict, slot=None, launcher: list[str] | None = None, say=print) -> dict:
    """Train, then evaluate, one cell (each step skipped when already done). Returns a timing row."""
    sweep = grid["runs_root"] / SWEEP_DIR
    cfg_path = sweep / "cells" / f"{cell['name']}.yaml"
    files.atomic_write_text(cfg_path, config.dump(cell["cfg"]))
    log_path = sweep / "logs" / f"{cell['name']}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(slot)
    py = launcher if launcher else [sys.executable]
    where = f" [GPU {slot}]" if slot is not None else ""
    row = {"cell": cell["name"], "slot": slot, "train_s": None, "evaluate_s": None, "ok": False,
           "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    st = cell_status(cell)
    steps = []
    if not st["trained"]:
        how = (f"resuming, {st['checkpoints']} checkpoints done" if st["state"] == "partial" else "from scratch")
        steps.append(("train", f"training ({how})", [*py, str(TRAIN_SCRIPT), str(cfg_path)]))
    steps.append(("evaluate", "evaluating", [*py, str(EVALUATE_SCRIPT), str(cell["run_dir"]), *eval_overrides(grid, cell)]))
    for key, doing, cmd in steps:
        say(f"  {cell['name']}{where}: {doing} ...")
        t0 = time.time()
        rc = run_logged(cmd, log_path, env)
        row[f"{key}_s"] = round(time.time() - t0, 1)
        if rc != 0:
            row["error"] = f"{key}.py exited with {rc}"
            say(f"  {cell['name']}: {key}.py FAILED (exit {rc}); last lines of {log_path}:\n{_tail(log_path)}")
            return row
    row["ok"] = cell_status(cell)["state"] == "done"
    if not row["ok"]:
        row["error"] = "evaluate.py finished but records are missing"
    return row


class CellWorker:
    """work(cell, slot) for schedule(): runs a cell, appends its timing row, says how it went, and with
    stop_on_error starts no new cell after a failure. Never raises."""

    def __init__(self, grid: dict, n_todo: int, launcher=None, stop_on_error=False, say=print, extra=None):
        self.grid, self.n_todo, self.launcher, self.say = grid, n_todo, launcher, say
        self.extra = dict(extra or {})  # added to every timing row (a SLURM job's id)
        self.stop_on_error = stop_on_error
        self.timings = grid["runs_root"] / SWEEP_DIR / "timings.jsonl"
        self.failed: list[str] = []
        self.n_done = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, cell: dict, slot) -> dict:
        if self.stop.is_set():
            return {"cell": cell["name"], "ok": False, "error": "not started (--stop-on-error)"}
        t0 = time.time()
        try:
            row = run_cell(self.grid, cell, slot, self.launcher, self.say)
        except Exception as e:  # a bug or an OS error: report it, carry on with the other cells
            row = {"cell": cell["name"], "ok": False, "error": f"{type(e).__name__}: {e}"}
        row["total_s"] = round(time.time() - t0, 1)
        row.update(self.extra)
        with self.lock:
            self.n_done += 1
            files.append_jsonl(self.timings, row)
            head = f"[{self.n_done}/{self.n_todo}] {cell['name']}"
            if row["ok"]:
                self.say(f"{head}: done in {row['total_s']:.0f} s (train {row.get('train_s') or 0:.0f} s, "
                         f"evaluate {row.get('evaluate_s') or 0:.0f} s)")
            else:
                self.failed.append(cell["name"])
                self.say(f"{head}: FAILED: {row.get('error')}")
                if self.stop_on_error:
                    self.stop.set()
        return row


def select_cells(grid: dict, only=None) -> list[dict]:
    """The cells to run: all, or those named in `only` (an unknown name is an error)."""
    cells = grid["cells"]
    if not cells:
        raise GridError(f"{grid['path']}: the grid has no cells. {grid['notes']}".strip())
    if only:
        unknown = [n for n in only if n not in {c["name"] for c in cells}]
        if unknown:
            raise GridError(f"--only {unknown[0]}: no such cell in {grid['path']} (cells: "
                            + ", ".join(c["name"] for c in cells) + ")")
        cells = [c for c in cells if c["name"] in set(only)]
    return cells


def analyze_cells(grid: dict, done: list[str], say=print) -> int:
    """premem.py analyze over the finished cells into RUNS_ROOT/analysis; its exit status."""
    root = grid["runs_root"]
    out = root / ANALYSIS_DIR
    say(f"premem.py analyze over {len(done)} finished cells -> {out}")
    cmd = [sys.executable, str(PREMEM_SCRIPT), "analyze", *[str(root / n) for n in done], "--out", str(out),
           *grid["analyze_args"]]
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        hint = ("" if any(a.startswith("--threshold") for a in grid["analyze_args"]) else
                "; if the threshold could not be calibrated (test accuracy that does not vary), set "
                "analyze_args: [--threshold, \"-2.3\"] in the grid file for a fixed threshold")
        say(f"premem.py analyze exited with {rc}{hint}")
    return rc


class CellFailed(RuntimeError):
    """A cell run as a job did not end done: the job fails with this, so that SLURM shows it FAILED."""


def run_cell_job(grid: dict, cell: dict, launcher: list[str] | None = None) -> dict:
    """One cell as one job (what a SLURM job runs, through submitit): run_cell, as the local executor does
    (train unless trained, then evaluate; resumed from the last complete checkpoint), its timing row
    appended to RUNS_ROOT/_sweep/timings.jsonl. It takes no sweep lock: the jobs of a grid run at the same
    time, each in its own run folder. Raises CellFailed when the cell is not done at the end."""
    say = lambda m: print(m, flush=True)  # noqa: E731  (the job's stdout: its log)
    job = os.environ.get("SLURM_JOB_ID")
    worker = CellWorker(grid, 1, launcher, say=say, extra={"slurm_job": job} if job else None)
    row = worker(cell, None)
    if not row["ok"]:
        log = grid["runs_root"] / SWEEP_DIR / "logs" / f"{cell['name']}.log"
        raise CellFailed(f"cell {cell['name']}: {row.get('error')} (its train.py / evaluate.py output: {log})")
    return row


def analyze_done(grid: dict, say=print) -> list[str]:
    """premem.py analyze over the cells done now (the analysis job's callable, and `sweep.py analyze`).
    Returns their names; raises GridError when none is done and CellFailed when premem.py fails."""
    rows = grid_status(grid)
    done = [r["cell"] for r in rows if r["state"] == "done"]
    if not done:
        raise GridError(f"{grid['path']}: no cell is done yet in {grid['runs_root']}: nothing to analyze")
    print_status(grid, rows, out=sys.stdout)
    rc = analyze_cells(grid, done, say)
    if rc != 0:
        raise CellFailed(f"premem.py analyze exited with {rc}")
    return done


def analyze_grid(grid: dict, say=print) -> int:
    """`sweep.py analyze GRID`: the analysis over the cells done now, on this machine, under the sweep
    lock (no local sweep writes the analysis folder meanwhile). 0, or 1 when premem.py failed."""
    if all(r["state"] != "done" for r in grid_status(grid)):
        analyze_done(grid, say)  # raises the GridError that says so, before the lock file is written
    with sweep_lock(grid["runs_root"]):
        try:
            analyze_done(grid, say)
        except CellFailed:
            return 1
    return 0


def run_grid(grid: dict, gpus=None, launcher=None, only=None, analyze=True, stop_on_error=False,
             say=print) -> int:
    """Run every selected cell that is not done, then analyze the finished ones. 0 when every selected
    cell is done (and the analysis ran), 1 otherwise. A second sweep on the same RUNS_ROOT is refused
    (files.LockedError) before anything runs."""
    cells = select_cells(grid, only)
    root = grid["runs_root"]
    with sweep_lock(root):
        status = {r["cell"]: r for r in grid_status(grid)}
        todo = [c for c in cells if status[c["name"]]["state"] != "done"]
        say(f"grid {grid['name']}: {len(cells)} cells, {len(cells) - len(todo)} done, {len(todo)} to run "
            f"({'one cell per GPU on ' + ','.join(map(str, gpus)) if gpus else 'one after another'}) -> {root}")
        worker = CellWorker(grid, len(todo), launcher, stop_on_error, say)
        schedule(todo, list(gpus) if gpus else [None], worker)
        rows = grid_status(grid)
        print_status(grid, rows, out=sys.stdout)
        done = [r["cell"] for r in rows if r["state"] == "done"]
        if analyze and done and analyze_cells(grid, done, say) != 0:
            return 1
        return 1 if worker.failed or len(done) < len(grid["cells"]) and not only else 0
