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
The library behind it: premem_kit/grids/grid.py (grid files, status) and premem_kit/grids/grid_run.py (running).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys

from premem_kit.core import cli


def parse_gpus(text: str) -> list[str]:
    ids = [x.strip() for x in text.split(",") if x.strip()]
    if not ids or len(set(ids)) != len(ids):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct GPU ids separated by commas, e.g. 0,1,2,3")
    return ids


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sweep.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
    r.add_argument("--gpus", type=parse_gpus, help="one cell per GPU: comma-separated GPU ids, e.g. 0,1,2,3")
    r.add_argument("--launcher", help="command that starts train.py/evaluate.py instead of python, e.g. "
                                      "\"accelerate launch --num_processes 2\" (data parallel within a cell)")
    r.add_argument("--only", nargs="+", metavar="CELL", help="run only these cells")
    r.add_argument("--no-analyze", action="store_true", help="skip premem.py analyze at the end")
    r.add_argument("--stop-on-error", action="store_true", help="start no new cell after a failure")
    return ap


def list_grids() -> int:
    from premem_kit.grids.grid import ROOT, GridError, list_grids as grid_files, load_grid

    for p in grid_files():
        try:
            g = load_grid(p)
            print(f"{p.relative_to(ROOT)}: {len(g['cells'])} cells -> {g['runs_root']}  {g['description']}")
        except GridError as e:
            print(f"{p.relative_to(ROOT)}: ERROR {e}")
    return 0


def show(grid: dict) -> int:
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


def sweep(a) -> int:
    from premem_kit.grids.grid import grid_status, load_grid, print_status

    if a.cmd == "list":
        return list_grids()
    grid = load_grid(a.grid, a.runs_root)
    if a.cmd == "show":
        return show(grid)
    if a.cmd == "status":
        rows = grid_status(grid)
        print(json.dumps(rows, indent=2)) if a.json else print_status(grid, rows)
        return 0
    from premem_kit.grids.grid_run import run_grid

    launcher = shlex.split(a.launcher) if a.launcher else None
    gpus = a.gpus
    if launcher and gpus:
        print("note: --gpus with --launcher: each cell's processes share the one GPU it is given", file=sys.stderr)
    return run_grid(grid, gpus=gpus, launcher=launcher, only=a.only, analyze=not a.no_analyze,
                    stop_on_error=a.stop_on_error, say=lambda m: print(m, flush=True))


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    return cli.run("sweep.py", sweep, a)


if __name__ == "__main__":
    sys.exit(main())
