"""Run a grid of training runs unattended: train, then evaluate, every cell; then premem.py analyze.

    python sweep.py list                            # the grid files in grids/ and their cell counts
    python sweep.py show GRID                       # every cell: run folder and the keys it sets
    python sweep.py status GRID                     # each cell: done / partial / pending
    python sweep.py run GRID [--gpus 0,1,2,3] [--launcher "accelerate launch --num_processes 2"]
                             [--only NAME ...] [--no-analyze] [--stop-on-error]
    python sweep.py run GRID --executor slurm [--partition P] [--gpus-per-cell 1] [--time-min 600] ...
    python sweep.py cancel GRID [--only NAME ...]   # scancel the grid's SLURM jobs
    python sweep.py analyze GRID                    # premem.py analyze over the cells done now, here

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

On a SLURM cluster (--executor slurm, docs/slurm.md) each cell not done and not queued or running is
one job (through submitit) that runs the same train-then-evaluate; the analysis is a job that starts
when they have all ended. `run` returns once they are submitted; job ids go to
RUNS_ROOT/_sweep/slurm/jobs.json, and `status` shows each cell's SLURM state beside its run folder's.
The grid file's `slurm:` section gives defaults for the SLURM options; the command line overrides them.

Timings (seconds of train and evaluate per cell) are appended to RUNS_ROOT/_sweep/timings.jsonl.
Exit status: 0 when every selected cell is done, 1 when a cell failed, 2 on a bad grid file.
The library behind it: premem_kit/grids/grid.py (grid files, status), premem_kit/grids/grid_run.py (running)
and premem_kit/grids/grid_slurm.py (SLURM).
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


SLURM_OPTIONS = ("partition", "account", "gpus_per_cell", "cpus_per_cell", "mem_gb", "time_min", "sbatch_flags")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sweep.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the grid files in grids/")
    for name, h in (("show", "every cell's run folder and keys"),
                    ("status", "each cell: done / partial / pending (and its SLURM job's state)"),
                    ("cancel", "scancel the grid's queued and running SLURM jobs (the cells keep their checkpoints)"),
                    ("analyze", "premem.py analyze over the cells done now, on this machine")):
        p = sub.add_parser(name, help=h)
        p.add_argument("grid", help="grid file (or its name in grids/)")
        p.add_argument("--runs-root", help="override the grid's runs_root")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if name == "cancel":
            p.add_argument("--only", nargs="+", metavar="CELL", help="cancel only these cells' jobs")
    r = sub.add_parser("run", help="train + evaluate every cell not done, then premem.py analyze")
    r.add_argument("grid", help="grid file (or its name in grids/)")
    r.add_argument("--runs-root", help="override the grid's runs_root")
    r.add_argument("--gpus", type=parse_gpus, help="one cell per GPU: comma-separated GPU ids, e.g. 0,1,2,3")
    r.add_argument("--launcher", help="command that starts train.py/evaluate.py instead of python, e.g. "
                                      "\"accelerate launch --num_processes 2\" (data parallel within a cell)")
    r.add_argument("--only", nargs="+", metavar="CELL", help="run only these cells")
    r.add_argument("--no-analyze", action="store_true", help="skip premem.py analyze at the end")
    r.add_argument("--stop-on-error", action="store_true", help="start no new cell after a failure")
    r.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: cells run here (default); slurm: one SLURM job per cell, through submitit")
    s = r.add_argument_group("SLURM (--executor slurm; defaults from the grid file's slurm: section; docs/slurm.md)")
    s.add_argument("--partition", help="partition (queue); default: the cluster's default partition")
    s.add_argument("--account", help="account charged for the jobs")
    s.add_argument("--gpus-per-cell", type=cli.nonnegative_int, metavar="N", help="GPUs per cell job (default 0)")
    s.add_argument("--cpus-per-cell", type=cli.positive_int, metavar="N", help="CPUs per cell job (default 1)")
    s.add_argument("--mem-gb", type=cli.positive_float, metavar="GB", help="memory per cell job (default: cluster's)")
    s.add_argument("--time-min", type=cli.positive_int, metavar="MIN", help="time limit per cell job (default 60)")
    s.add_argument("--sbatch-flags", metavar="FLAGS", help="other sbatch options, e.g. \"--qos=high --exclusive\"")
    return ap


def check_executor(ap: argparse.ArgumentParser, a) -> None:
    """Options that belong to the other executor are a usage error (exit 2) before anything runs."""
    given = [o for o in SLURM_OPTIONS if getattr(a, o, None) is not None]
    if a.cmd == "run" and a.executor == "local" and given:
        ap.error(f"--{given[0].replace('_', '-')} is a SLURM option: add --executor slurm")
    if a.cmd == "run" and a.executor == "slurm" and (a.gpus or a.stop_on_error):
        ap.error(f"{'--gpus' if a.gpus else '--stop-on-error'} is for --executor local"
                 + ("; on SLURM, --gpus-per-cell" if a.gpus else ""))


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
    if a.cmd == "analyze":
        from premem_kit.grids.grid_run import analyze_grid

        return analyze_grid(grid, say=lambda m: print(m, flush=True))
    from premem_kit.grids import grid_slurm

    if a.cmd == "status":
        rows = grid_status(grid)
        jobs, why = grid_slurm.job_table(grid)
        if why:
            print(f"note: {why}", file=sys.stderr)
        if a.json:
            print(json.dumps([{**r, **({"slurm": jobs.get(r["cell"])} if jobs is not None else {})} for r in rows],
                             indent=2))
        else:
            print_status(grid, rows, jobs=jobs)
        return 0
    if a.cmd == "cancel":
        return grid_slurm.cancel_grid(grid, a.only)
    launcher = shlex.split(a.launcher) if a.launcher else None
    if a.executor == "slurm":
        opts = grid_slurm.options(grid, {o: getattr(a, o) for o in SLURM_OPTIONS})
        return grid_slurm.submit_grid(grid, opts, only=a.only, analyze=not a.no_analyze, launcher=launcher,
                                      say=lambda m: print(m, flush=True))
    grid_slurm.refuse_local_if_queued(grid, a.only)
    from premem_kit.grids.grid_run import run_grid

    gpus = a.gpus
    if launcher and gpus:
        print("note: --gpus with --launcher: each cell's processes share the one GPU it is given", file=sys.stderr)
    return run_grid(grid, gpus=gpus, launcher=launcher, only=a.only, analyze=not a.no_analyze,
                    stop_on_error=a.stop_on_error, say=lambda m: print(m, flush=True))


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    check_executor(ap, a)
    return cli.run("sweep.py", sweep, a)


if __name__ == "__main__":
    sys.exit(main())
