"""A grid on a SLURM cluster: `sweep.py run GRID --executor slurm`, `status`, `cancel`.

Each pending cell becomes one SLURM job (through submitit, slurm.py) that runs grid_run.run_cell_job:
the same train-then-evaluate as the local executor, resumed from the cell's last complete checkpoint.
The analysis is one more job that starts when every cell job has ended (afterany) and analyzes the cells
done then. Job ids go to RUNS_ROOT/_sweep/slurm/jobs.json, job logs to RUNS_ROOT/_sweep/slurm/<job id>/.
A re-run submits only the cells that are neither done (their run folder says so) nor queued or running.
The options come from the grid file's `slurm:` section, overridden by the command line; they are checked,
against the cluster too, before anything is written or submitted.
"""
from __future__ import annotations

import sys
from pathlib import Path

from premem_kit.grids import slurm
from premem_kit.grids.grid import SWEEP_DIR, grid_status, load_grid
from premem_kit.grids.grid_run import analyze_done, run_cell_job, select_cells, sweep_lock
from premem_kit.grids.slurm import SlurmError

SLURM_DIR = "slurm"  # inside RUNS_ROOT/_sweep: jobs.json and one log folder per job


def state_path(grid: dict) -> Path:
    return Path(grid["runs_root"]) / SWEEP_DIR / SLURM_DIR / "jobs.json"


def log_folder(grid: dict) -> Path:
    return Path(grid["runs_root"]) / SWEEP_DIR / SLURM_DIR / "%j"


def options(grid: dict, cli: dict) -> slurm.SlurmOptions:
    """The grid's `slurm:` section with the command line's options over it (None: not given). The sbatch
    flags of both are merged, the command line's winning on the same flag."""
    section = dict(grid.get("slurm") or {})
    flags = dict(slurm.parse_options(section).sbatch_flags)
    given = {k: v for k, v in cli.items() if v is not None}
    if "sbatch_flags" in given:
        flags.update(slurm.parse_sbatch_flags(given.pop("sbatch_flags")))
    return slurm.parse_options({**section, **given, "sbatch_flags": flags}, where="")


def absolute(grid: dict) -> dict:
    """The grid with an absolute runs_root: what the jobs get (and the job list records), whatever folder
    a later `sweep.py status` runs from."""
    root = Path(grid["runs_root"])
    return grid if root.is_absolute() else load_grid(grid["path"], root.resolve())


def describe(opts: slurm.SlurmOptions, partition: str) -> str:
    parts = [f"partition {partition}", f"{opts.cpus_per_cell} CPU" + "s" * (opts.cpus_per_cell > 1)]
    parts += [f"{opts.gpus_per_cell} GPU" + "s" * (opts.gpus_per_cell > 1)] if opts.gpus_per_cell else []
    parts += [f"{opts.mem_gb:g} GB"] if opts.mem_gb is not None else []
    parts += [f"{opts.time_min} min"] + ([f"account {opts.account}"] if opts.account else [])
    return ", ".join(parts) + " per cell"


def submit_grid(grid: dict, opts: slurm.SlurmOptions, only=None, analyze=True, launcher=None, say=print) -> int:
    """Submit every selected cell that is neither done nor queued/running, one job each, then the analysis
    job after them (afterany). Returns 0 (the jobs' fate is for `sweep.py status`). A SlurmError (exit 2)
    before anything is written: no SLURM here, an unknown partition, resources no node of it has."""
    cells = select_cells(grid, only)
    why = slurm.sbatch_works()
    if why:
        raise SlurmError(f"--executor slurm: {why}")
    partition = slurm.check_cluster(opts)
    grid = absolute(grid)
    cells = [c for c in grid["cells"] if c["name"] in {x["name"] for x in cells}]
    state, logs = state_path(grid), log_folder(grid)
    with sweep_lock(grid["runs_root"]):  # one submission at a time: no cell submitted twice
        done = {r["cell"] for r in grid_status(grid) if r["state"] == "done"}
        jobs = slurm.cell_states(state)
        kit_cells = [slurm.Cell(c["name"], c["run_dir"], run_cell_job, (grid, c, launcher)) for c in cells]
        todo = slurm.cells_to_submit(kit_cells, state, lambda k: k.name in done)
        busy = [c["name"] for c in cells if c["name"] not in done and jobs.get(c["name"], {}).get("state")
                in slurm.ACTIVE]
        say(f"grid {grid['name']}: {len(cells)} cells, {len(done & {c['name'] for c in cells})} done, {len(busy)} "
            f"queued or running, {len(todo)} to submit ({describe(opts, partition)}) -> {grid['runs_root']}")
        ids = slurm.submit_cells(todo, opts, logs, state) if todo else {}
        for name, jid in ids.items():
            say(f"  {name}: job {jid}")
        if analyze and ids:
            aid = slurm.submit_analyze(analyze_done, (grid,), opts, logs, state)
            after = slurm.read_state(state)["analyze"]["after"]
            say(f"  analysis: job {aid}, once job{'s' * (len(after) > 1)} {', '.join(after) or '-'} "
                f"{'have' if len(after) > 1 else 'has'} ended")
        elif analyze and not ids and not busy:
            say(f"nothing to submit; `sweep.py analyze {grid['path']}` analyzes the done cells here")
    say(f"job list: {state}; logs: {logs.parent}/<job id>/; watch: sweep.py status {grid['path']}")
    return 0


def job_table(grid: dict) -> tuple[dict | None, str | None]:
    """({cell: {"job_id", "state", ...}, "analyze": {...}}, None) from the grid's job list and SLURM;
    (None, None) when the grid has no job list; (None, why) when SLURM cannot be asked."""
    state = state_path(grid)
    if not state.exists():
        return None, None
    try:
        jobs = slurm.cell_states(state)
        st = slurm.read_state(state)
        if st.get("analyze"):
            aid = st["analyze"]["job_id"]
            s = slurm.job_states([aid], st.get("log_folder"))[aid]
            jobs["analyze"] = {"job_id": aid, "state": s + (" (afterany)" if s == "PENDING" else ""),
                               "log": str(slurm.log_path(st.get("log_folder"), aid))}
    except SlurmError as e:
        return None, f"{state}: cannot ask SLURM for the jobs' states: {e}"
    return jobs, None


def cancel_grid(grid: dict, only=None, say=print) -> int:
    """scancel the grid's queued/running jobs (of `only`'s cells; all cells and the analysis without it).
    The run folders keep their complete checkpoints: the next `sweep.py run` resumes from them."""
    names = [c["name"] for c in select_cells(grid, only)] if only else None
    state = state_path(grid)
    if not state.exists():
        raise SlurmError(f"grid {grid['name']} has no SLURM jobs ({state} does not exist)")
    ids = slurm.cancel(state, names)
    whose = "these cells" if only else f"grid {grid['name']}"
    say(f"cancelled job{'s' * (len(ids) != 1)} {', '.join(ids)}" if ids else f"no job of {whose} is queued or running")
    return 0


def refuse_local_if_queued(grid: dict, only=None) -> None:
    """Before a local run: a cell whose SLURM job is queued or running would get two writers. Refused
    (SlurmError) when the grid's job list says so; nothing to check without a job list."""
    jobs, why = job_table(grid)
    if why:
        print(f"note: {why}; not checked for SLURM jobs of these cells", file=sys.stderr)
    names = {c["name"] for c in select_cells(grid, only)}
    busy = [f"{n} (job {j['job_id']}, {j['state']})" for n, j in (jobs or {}).items()
            if n in names and j["state"] in slurm.ACTIVE]
    if busy:
        more = f" (and {len(busy) - 1} more cells)" if len(busy) > 1 else ""
        raise SlurmError(f"cell {busy[0]} has a SLURM job queued or running{more}; running it here too would give "
                         f"its run folder two writers: wait, or `sweep.py cancel {grid['path']}` first")
