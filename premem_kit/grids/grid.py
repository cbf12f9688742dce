"""Grid files (grids/*.yaml) and the state of their cells: what sweep.py runs.

A grid file names a base config (a configs/ file), the folder its runs go to, keys common to every
cell, and one entry per cell with the keys that cell changes (learning_rate, num_epochs, subset, ...).
Each cell is one run folder, named from its task, model, epochs, data size and learning rate:
RUNS_ROOT/<task>_<model>_<E>ep_<size>_lr<LR> (e.g. gsm8k_llama3-8b_3ep_full_lr2e-5), or its own `name:`.

Running the cells (train.py, evaluate.py, premem.py analyze as subprocesses) is grid_run.py's job.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

from premem_kit.core import config as config_mod
from premem_kit.core.config import Config
from premem_kit.core.files import read_yaml_mapping
from premem_kit.core.overrides import cell_keys_for
from premem_kit.core import records, runs
from premem_kit.core.errors import KitError
from premem_kit.grids import slurm

ROOT = Path(__file__).resolve().parents[2]  # the repo root: grids/, configs/ and the scripts
GRIDS_DIR = ROOT / "grids"
SWEEP_DIR = "_sweep"  # inside RUNS_ROOT: cell configs, logs, timings, lock
ANALYSIS_DIR = "analysis"  # inside RUNS_ROOT: premem.py analyze over the finished cells
GRID_KEYS = {
    "name": "short name of the grid",
    "description": "what the grid reproduces",
    "source": "where the cells come from (paper table, file)",
    "notes": "anything a user should know (unverified cells, ...)",
    "base": "config file every cell starts from (relative to the repo root or to the grid file)",
    "model_name": "short model name used in run folder names (default: from the model key)",
    "data_name": "short dataset name that starts run folder names (default: the task, gsm8k or math)",
    "runs_root": "folder the cell run folders go to (relative to the current folder)",
    "common": "config keys set in every cell",
    "cells": "list of cells: config keys each cell sets (plus optional 'name' and 'note')",
    "analyze_args": "extra premem.py analyze arguments, e.g. [--threshold, -2.3]",
    "slurm": "defaults for sweep.py run --executor slurm: partition, gpus_per_cell, time_min, ... (docs/slurm.md)",
}


class GridError(KitError, ValueError):
    """A bad grid file or sweep request; the message names the file, line and cell."""


# ----------------------------------------------------------------------------------------------------
# run folder names

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


def cell_name(cfg: Config, model_name: str, cell_keys=(), data_name: str | None = None) -> str:
    """<data>_<model>_<E>ep_<size>_lr<LR>, <data> the task unless the grid names its data (data_name: arith);
    the size gets the subset_fraction when the cell itself sets one."""
    size = cfg.subset
    if "subset_fraction" in cell_keys and cfg.subset_fraction is not None:
        size += "-" + str(cfg.subset_fraction).replace("/", "of")
    task = (data_name or cfg.task) + ("-l" + "".join(map(str, cfg.math_levels)) if cfg.math_levels else "")
    return f"{task}_{model_name}_{fmt_epochs(cfg.num_epochs)}ep_{size}_lr{fmt_lr(cfg.learning_rate)}"


def check_cell_name(name, where: str) -> str:
    """A cell name becomes the folder RUNS_ROOT/<name>: it must be one plain folder name, so that no
    grid file can send a run outside RUNS_ROOT or onto the sweep's own folders."""
    if isinstance(name, bool) or not isinstance(name, (str, int, type(None))):
        raise GridError(f"{where}: cell name must be a plain folder name, got {name!r}")
    text = "" if name is None else str(name)
    bad = ("it is empty" if not text.strip() else
           "it contains '/' or '\\'" if "/" in text or "\\" in text or Path(text).is_absolute() else
           "it is '.' or '..'" if text in (".", "..") else
           "it contains a NUL byte" if "\0" in text else
           f"{text} is the sweep's own folder" if text in (SWEEP_DIR, ANALYSIS_DIR) else None)
    if bad:
        raise GridError(f"{where}: cell name {text!r} is not a plain folder name ({bad}); a cell name becomes "
                        f"the folder runs_root/<name>, so use letters, digits, '-', '_' and '.'")
    return text


# ----------------------------------------------------------------------------------------------------
# grid files

def cell_lines(text: str) -> list[int]:
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
    if p.is_dir():
        raise GridError(f"grid file {grid} is a folder; give a grid file (grids/*.yaml) or its name")
    if p.exists():
        return p
    for cand in (GRIDS_DIR / grid, GRIDS_DIR / f"{grid}.yaml"):
        if cand.exists():
            return cand
    known = ", ".join(sorted(q.stem for q in GRIDS_DIR.glob("*.yaml"))) or "none"
    raise GridError(f"grid file {grid} does not exist (grids in {GRIDS_DIR}: {known})")


def read_grid_file(path: Path) -> tuple[dict, str]:
    """The grid file's mapping (top-level keys checked) and its text."""
    g = read_yaml_mapping(path, GridError, "grid file")
    text = path.read_text(encoding="utf-8")
    if "evaluate_args" in g:  # grids before settings had one name
        keys = ", ".join(f"{k}: {v}" for k, v in cell_keys_for(g["evaluate_args"] or []).items())
        raise GridError(f"{path}: 'evaluate_args' is gone: evaluation settings are config keys now, set in "
                        f"'common:' (or a cell) like any other key" + (f"; here: {keys}" if keys else ""))
    unknown = [k for k in g if k not in GRID_KEYS]
    if unknown:
        raise GridError(f"{path}: unknown grid key '{unknown[0]}'; valid keys: {', '.join(GRID_KEYS)}")
    for k in ("base", "cells"):
        if k not in g:
            raise GridError(f"{path}: missing key '{k}' ({GRID_KEYS[k]})")
    g["cells"] = g["cells"] or []
    if not isinstance(g["cells"], list):
        raise GridError(f"{path}: 'cells' must be a list of mappings, got {type(g['cells']).__name__}")
    g["common"] = g.get("common") or {}
    if not isinstance(g["common"], dict):
        raise GridError(f"{path}: 'common' must be a mapping of config keys, got {type(g['common']).__name__}")
    v = g.get("analyze_args") or []
    if not isinstance(v, list) or not all(isinstance(x, (str, int, float)) for x in v):
        raise GridError(f"{path}: 'analyze_args' must be a list of command-line words, e.g. [--threshold, \"-2.3\"]")
    g["analyze_args"] = [str(x) for x in v]
    # checked here, with the other keys: a wrong SLURM option stops every command before anything runs
    g["slurm"] = {} if g.get("slurm") is None else g["slurm"]
    slurm.parse_options(g["slurm"], where=f"{path}: slurm: ")
    return g, text


def base_config(g: dict, path: Path) -> Config:
    """The grid's base config, found relative to the repo root or else to the grid file."""
    base = Path(g["base"])
    if not base.is_absolute():
        base = (ROOT / base) if (ROOT / base).exists() else (path.parent / base)
    if not base.exists():
        raise GridError(f"{path}: base config {g['base']} does not exist")
    try:
        return config_mod.load_config(base)
    except config_mod.ConfigError as e:
        raise GridError(f"{path}: base config: {e}") from None


def make_cell(g: dict, path: Path, base_cfg: Config, cell, where: str, root: Path) -> dict:
    """One checked cell: base config + common keys + the cell's keys, every value through config.py's
    checks; an error names the grid file, the cell's line and the key."""
    if not isinstance(cell, dict):
        raise GridError(f"{where}: a cell must be a mapping of config keys, got {cell!r}")
    cell = dict(cell)
    has_name, name = "name" in cell, cell.pop("name", None)
    note = cell.pop("note", None)
    common = g["common"]
    if "run_dir" in cell or "run_dir" in common:
        raise GridError(f"{where}: 'run_dir' is set by the sweep (runs_root/<cell name>); remove it")
    try:
        cfg = config_mod.updated(config_mod.from_mapping(common, f"{path} common", base=base_cfg), where, **cell)
    except config_mod.ConfigError as e:
        raise GridError(str(e) if str(e).startswith(str(path)) else f"{where}: {e}") from None
    if not has_name:
        name = cell_name(cfg, g.get("model_name") or model_short_name(cfg.model), cell, g.get("data_name"))
    name = check_cell_name(name, where)
    cfg = config_mod.updated(cfg, where, run_dir=str(root / name))
    return {"name": name, "cfg": cfg, "run_dir": root / name, "sets": cell, "note": note}


def load_grid(grid, runs_root=None) -> dict:
    """Read and check a grid file. Returns {name, path, runs_root, cells: [{name, index, line, cfg, run_dir,
    sets, note}], common, description, source, notes, analyze_args, slurm (the section, checked)}."""
    path = resolve_grid_path(grid)
    g, text = read_grid_file(path)
    base_cfg = base_config(g, path)
    root = Path(runs_root or g.get("runs_root") or f"runs/grids/{path.stem}")
    lines = cell_lines(text)
    out, seen = [], {}
    for i, cell in enumerate(g["cells"]):
        line = lines[i] if i < len(lines) else None
        where = f"{path} line {line} (cell {i + 1})" if line else f"{path} (cell {i + 1})"
        c = make_cell(g, path, base_cfg, cell, where, root)
        if c["name"] in seen:
            raise GridError(f"{where}: cell name {c['name']} is the same as cell {seen[c['name']] + 1}'s; give one "
                            f"of them a 'name:' or make them differ in task, model, epochs, size or learning rate")
        seen[c["name"]] = i
        out.append({"name": c["name"], "index": i, "line": line, **c})
    return {"name": g.get("name") or path.stem, "path": path, "runs_root": root, "cells": out,
            "common": g["common"], "description": g.get("description", ""), "source": g.get("source", ""),
            "notes": g.get("notes", ""), "analyze_args": g["analyze_args"], "slurm": g["slurm"]}


def list_grids() -> list[Path]:
    """The grid files shipped in grids/."""
    return sorted(GRIDS_DIR.glob("*.yaml"))


# ----------------------------------------------------------------------------------------------------
# status

def flag_values(args: list[str], flag: str, default: list) -> list:
    """The words after `flag` in a command-line argument list (up to the next --option), else default."""
    if flag not in args:
        return list(default)
    j, out = args.index(flag) + 1, []
    while j < len(args) and not args[j].startswith("--"):
        out.append(args[j])
        j += 1
    return out


def expected_records(cfg: Config, run: Path) -> list[Path]:
    """The record files evaluate.py writes for this run, given its complete checkpoints."""
    steps = ([0] if cfg.eval_base_model else []) + [step for step, _, _ in runs.checkpoints(run)]
    return [runs.record_path(run, s, sp, v) for s in steps for sp in cfg.eval_splits for v in cfg.eval_variants]


SAMPLER_KEYS = ("eval_samples", "eval_temperature", "eval_top_p", "eval_max_new_tokens", "eval_seed")


def changed_keys(cell: dict, records_have: list[Path]) -> list[str]:
    """The settings in which the grid file's cell and its run folder disagree: training keys against the
    run's config.yaml, sampler keys against the settings kept in its record files."""
    from premem_kit.training.trainer import NON_TRAINING_KEYS

    run, cfg = Path(cell["run_dir"]), cell["cfg"]
    if not runs.config_path(run).exists():
        return []
    try:
        saved = runs.read_config(run)
    except KitError as e:
        return [f"config.yaml ({e})"]
    out = [k for k in config_mod.FIELDS if k not in NON_TRAINING_KEYS and getattr(saved, k) != getattr(cfg, k)]
    for p in records_have:
        have = records.read_settings(p) or {}
        split = p.name.split(".")[1]  # step-N.<split>.<variant>.parquet (runs.record_path)
        want = {k: cfg.samples_for(split) if k == "eval_samples" else getattr(cfg, k) for k in SAMPLER_KEYS}
        out += [f"{k} (records)" for k in SAMPLER_KEYS if k in have and have[k] != want[k] and
                f"{k} (records)" not in out]
    return out


def cell_status(cell: dict) -> dict:
    """done (trained, every record present) / partial (something started) / pending (nothing yet) /
    changed (the grid file's settings are not those the run folder was made with: `changed` names them)."""
    run = Path(cell["run_dir"])
    trained = runs.summary_path(run).exists()
    ckpts = runs.complete_checkpoints(run) if run.is_dir() else []
    want = expected_records(cell["cfg"], run) if run.is_dir() else []
    have = [p for p in want if p.exists()]
    started = run.is_dir() and (runs.config_path(run).exists() or bool(ckpts) or bool(runs.checkpoint_folders(run)))
    state = "done" if trained and len(have) == len(want) else ("partial" if started else "pending")
    changed = changed_keys(cell, have) if started else []
    return {"cell": cell["name"], "state": "changed" if changed else state, "trained": trained,
            "checkpoints": len(ckpts), "records": len(have), "records_expected": len(want) if trained else None,
            "changed": changed}


def grid_status(grid: dict) -> list[dict]:
    return [cell_status(c) for c in grid["cells"]]


def print_status(grid: dict, rows: list[dict], out=None, jobs: dict | None = None) -> None:
    """The status table; with `jobs` ({cell: {"job_id", "state"}}, and "analyze" for the analysis job: what
    grid_slurm.job_table reads from SLURM) each cell's SLURM job and state beside its run folder's."""
    out = out or sys.stdout
    w = max([len(r["cell"]) for r in rows] + [4 if jobs is None else 8])

    def job(name: str) -> str:
        if jobs is None:
            return ""
        j = jobs.get(name, {"job_id": "-", "state": "-"})
        return f"  {j['job_id']:>8s}  {j['state']}"

    print(f"grid {grid['name']} ({grid['path']}): {len(rows)} cells in {grid['runs_root']}", file=out)
    print(f"{'cell':{w}s}  {'state':8s} {'trained':7s} {'ckpts':>5s} {'records':>9s}"
          + (f"  {'job':>8s}  slurm" if jobs is not None else ""), file=out)
    for r in rows:
        rec = f"{r['records']}/{r['records_expected']}" if r["records_expected"] is not None else f"{r['records']}/?"
        print(f"{r['cell']:{w}s}  {r['state']:8s} {'yes' if r['trained'] else 'no':7s} {r['checkpoints']:>5d} "
              f"{rec:>9s}{job(r['cell'])}", file=out)
    if jobs is not None and "analyze" in jobs:
        print(f"{'analysis':{w}s}  {'':8s} {'':7s} {'':>5s} {'':>9s}{job('analyze')}", file=out)
    counts = {s: sum(r["state"] == s for r in rows) for s in ("done", "partial", "pending", "changed")}
    line = f"done {counts['done']}, partial {counts['partial']}, pending {counts['pending']}"
    print(line + (f", changed {counts['changed']}" if counts["changed"] else ""), file=out)
    for r in rows:
        if r["state"] == "changed":
            print(f"  {r['cell']}: the grid file differs from the run folder in {', '.join(r['changed'])}; "
                  f"restore the grid's values, or give the cell a new name (a new run folder)", file=out)
