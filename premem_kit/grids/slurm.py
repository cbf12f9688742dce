"""Grid cells as SLURM jobs, through submitit: check options, submit, ask SLURM, resubmit, cancel, analyze.

One cell = one SLURM job that runs the cell's callable (train, then evaluate, then its bookkeeping) to
the end. The kit's cells resume from their last complete checkpoint when rerun, so every way a job can
stop early comes down to "run the same callable again": a time-out or preemption is requeued by
submitit (the callable is Checkpointable), a cancelled or failed job is resubmitted by the next
`sweep.py run`, which submits only the cells that are neither done nor queued/running.

What is where (log_folder is e.g. RUNS_ROOT/_sweep/slurm/%j, one folder per job id):
    <log_folder>/<id>_submission.sh   the sbatch script submitit wrote
    <log_folder>/<id>_0_log.out|err   the job's stdout / stderr (submitit's own lines, then the cell's)
    <log_folder>/<id>_0_result.pkl    submitit's record of how the callable ended (success or the error)
    state file (e.g. RUNS_ROOT/_sweep/slurm/jobs.json)   cell -> job id, submitted time, earlier ids

SLURM is asked with squeue and scontrol only: sacct needs slurmdbd, which small clusters (and the test
cluster of tools/slurm_cluster.sh) lack. A job stays visible to squeue for MinJobAge (300 s by
default) after it ends; after that it is "gone" and job_states() falls back on submitit's result file
(COMPLETED / FAILED) or says GONE. Whether a cell is done is never decided here: the caller says so
from the run folder (is_done), which is the truth that survives everything.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from premem_kit.core import files
from premem_kit.core.errors import KitError

# Jobs in these states are still SLURM's business: don't resubmit their cell, do wait for them.
ACTIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
                    "REQUEUE_FED", "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT"})
# The kit's root, put on the job's PYTHONPATH so that the pickled callable (premem_kit.*) imports there
# whatever folder sbatch was called from.
KIT_ROOT = Path(importlib.import_module(__name__.split(".")[0]).__file__).resolve().parents[1]


class SlurmError(KitError, ValueError):
    """A bad SLURM option or a cluster that cannot take the jobs; the message names the option."""


@dataclass(frozen=True)
class SlurmOptions:
    """Per-job resources; the names are those of the `slurm:` grid section and of `sweep.py run`'s options
    (--partition, --gpus-per-cell, ...). None means the cluster's default."""
    partition: str | None = None
    account: str | None = None
    gpus_per_cell: int = 0
    cpus_per_cell: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    sbatch_flags: dict = field(default_factory=dict)  # any other sbatch option: {"qos": "high"}
    setup: tuple = ()          # shell lines run before the cell, e.g. "module load cuda/12.1"
    max_requeue: int = 3       # requeues after a time-out (preemptions are requeued without limit)


@dataclass
class Cell:
    """A unit of work: `fn(*args, **kwargs)` runs the cell to completion (raising if it failed)."""
    name: str
    run_dir: Path
    fn: Callable
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


# Options submitit writes itself, or that have their own field: not allowed among sbatch_flags.
_OWN = {"output": "", "error": "", "open_mode": "", "signal": "", "array": "", "wrap": "",
        "job_name": "(the cell's name)", "partition": "partition", "account": "account", "time": "time_min",
        "mem": "mem_gb", "cpus_per_task": "cpus_per_cell", "gpus_per_node": "gpus_per_cell", "gpus": "gpus_per_cell"}


def parse_sbatch_flags(flags) -> dict:
    """'--qos=high --constraint=a100 --exclusive' (or a list of such) -> {"qos": "high", ...}."""
    words = shlex.split(flags) if isinstance(flags, str) else [str(w) for w in flags]
    out = {}
    for w in words:
        m = re.fullmatch(r"--([a-z][a-z0-9_-]*)(?:=(.*))?", w)
        if not m:
            raise SlurmError(f"sbatch_flags: {w!r}: expected --name=value or --name (e.g. --qos=high)")
        out[m.group(1).replace("-", "_")] = True if m.group(2) is None else m.group(2)
    return out


def parse_options(mapping: dict, where: str = "slurm: ") -> SlurmOptions:
    """SlurmOptions from a grid's `slurm:` section merged with the command line; a wrong key or value is a
    SlurmError naming it (`where` says which file/section), raised before anything is submitted."""
    if not isinstance(mapping, dict):
        raise SlurmError(f"{where.rstrip(': ')}: expected a mapping of option: value, got {mapping!r}")
    known = {f.name for f in dataclasses.fields(SlurmOptions)}
    for k in mapping:
        if k not in known:
            raise SlurmError(f"{where}{k}: unknown option (known: {', '.join(sorted(known))})")

    def get(key, check, expected):
        v = mapping.get(key, getattr(SlurmOptions, key, None))
        if v is None and key in ("partition", "account", "mem_gb"):
            return None
        if isinstance(v, bool) or not check(v):
            raise SlurmError(f"{where}{key}: expected {expected}, got {v!r}")
        return v

    name_ok = lambda v: isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.\-]+", v) is not None
    flags = mapping.get("sbatch_flags") or {}
    flags = parse_sbatch_flags(flags) if isinstance(flags, (str, list)) else flags
    if not isinstance(flags, dict):
        raise SlurmError(f"{where}sbatch_flags: expected a mapping or '--name=value ...', got {flags!r}")
    flags = dict(flags)  # the caller's mapping stays as it was
    for k in list(flags):
        key = k.lstrip("-").replace("-", "_")
        if key in _OWN:
            raise SlurmError(f"{where}sbatch_flags: --{key.replace('_', '-')} is set by the kit"
                             + (f"; use {_OWN[key]}" if _OWN[key] else ""))
        flags[key] = flags.pop(k)
    setup = mapping.get("setup") or ()
    setup = [setup] if isinstance(setup, str) else setup
    if not all(isinstance(s, str) for s in setup):
        raise SlurmError(f"{where}setup: expected shell lines (strings), got {setup!r}")
    return SlurmOptions(
        partition=get("partition", name_ok, "a partition name"),
        account=get("account", name_ok, "an account name"),
        gpus_per_cell=get("gpus_per_cell", lambda v: isinstance(v, int) and v >= 0, "a whole number >= 0"),
        cpus_per_cell=get("cpus_per_cell", lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1"),
        mem_gb=get("mem_gb", lambda v: isinstance(v, (int, float)) and 0 < v < 1e6, "a number of GB > 0"),
        time_min=get("time_min", lambda v: isinstance(v, int) and v >= 1, "a whole number of minutes >= 1"),
        sbatch_flags=flags, setup=tuple(setup),
        max_requeue=get("max_requeue", lambda v: isinstance(v, int) and v >= 0, "a whole number >= 0"))


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]} not found: this machine is not a SLURM submit host "
                         "(tools/slurm_cluster.sh sets up a one-node cluster)") from None


def time_limit_minutes(limit: str) -> float:
    """A SLURM time limit ('infinite', 'MM', 'HH:MM:SS', 'D-HH', 'D-HH:MM:SS', ...) in minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a"):
        return float("inf")
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if days:  # D-HH[:MM[:SS]]
        h, m, s = (parts + [0, 0])[:3]
    else:     # MM, MM:SS, HH:MM:SS
        h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) == 3 else (0, parts[0], (parts + [0])[1])
    return int(days or 0) * 1440 + h * 60 + m + s / 60


def check_cluster(opts: SlurmOptions) -> str:
    """Check, before anything is submitted, that the partition exists and its nodes can ever run such a
    job (CPUs, memory, GPUs, time limit): SLURM would otherwise accept some of these and keep the job
    PENDING forever. Returns the partition used. The account is not checked (that needs slurmdbd)."""
    p = _run(["sinfo", "-h", "-o", "%P|%c|%m|%G|%l"])
    if p.returncode != 0:
        raise SlurmError(f"sinfo failed (is slurmctld up?): {p.stderr.strip()}")
    rows = [line.split("|") for line in p.stdout.split() if line.count("|") == 4]
    names = sorted({r[0].rstrip("*") for r in rows})
    part = opts.partition or next((r[0].rstrip("*") for r in rows if r[0].endswith("*")), None)
    if part is None:
        raise SlurmError(f"partition: the cluster has no default partition; choose one of {', '.join(names)}")
    if part not in names:
        raise SlurmError(f"partition: no partition {part!r} on this cluster (sinfo lists: {', '.join(names)})")
    mine = [r for r in rows if r[0].rstrip("*") == part]
    cpus = max(int(r[1].rstrip("+")) for r in mine)
    mem_mb = max(int(r[2].rstrip("+")) for r in mine)
    gpus = max(sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", r[3])) for r in mine)
    limit = max(time_limit_minutes(r[4]) for r in mine)
    if opts.cpus_per_cell > cpus:
        raise SlurmError(f"cpus_per_cell: {opts.cpus_per_cell} CPUs, but partition {part}'s nodes have {cpus}")
    if opts.mem_gb is not None and opts.mem_gb * 1024 > mem_mb:
        raise SlurmError(f"mem_gb: {opts.mem_gb} GB, but partition {part}'s nodes have {mem_mb / 1024:.1f} GB")
    if opts.gpus_per_cell > gpus:
        raise SlurmError(f"gpus_per_cell: {opts.gpus_per_cell} GPUs, but partition {part}'s nodes have "
                         f"{gpus} (gres: {', '.join(sorted({r[3] for r in mine}))})")
    if opts.time_min > limit:
        raise SlurmError(f"time_min: {opts.time_min} min, but partition {part}'s time limit is "
                         f"{mine[0][4]} ({limit:.0f} min)")
    return part


class CellJob:
    """What a job runs: the cell's callable. Checkpointable (submitit's protocol: a `checkpoint` method),
    so that on a time-out or preemption submitit requeues the same callable; the cell resumes from its
    last complete checkpoint, so there is no state to save here."""

    def __init__(self, fn: Callable, args: tuple = (), kwargs: dict | None = None):
        self.fn, self.args, self.kwargs = fn, tuple(args), dict(kwargs or {})

    def __call__(self):
        return self.fn(*self.args, **self.kwargs)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _executor(opts: SlurmOptions, log_folder: Path, partition: str):
    import submitit

    ex = submitit.AutoExecutor(folder=str(log_folder), cluster="slurm", slurm_max_num_timeout=opts.max_requeue)
    params = dict(timeout_min=opts.time_min, cpus_per_task=opts.cpus_per_cell, slurm_partition=partition,
                  slurm_setup=[f"export PYTHONPATH={shlex.quote(str(KIT_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
                               *opts.setup],
                  slurm_additional_parameters=dict(opts.sbatch_flags))
    if opts.gpus_per_cell:
        params["gpus_per_node"] = opts.gpus_per_cell
    if opts.mem_gb is not None:
        params["mem_gb"] = opts.mem_gb
    if opts.account:
        params["slurm_account"] = opts.account
    ex.update_parameters(**params)
    return ex


# --- the state file: {"log_folder": ..., "cells": {name: {"job_id", "submitted", "run_dir", "earlier"}},
#     "analyze": {"job_id", "submitted", "after"}} -------------------------------------------------------

def read_state(path) -> dict:
    path = Path(path)
    if not path.exists():
        return {"cells": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SlurmError(f"{path}: not a readable job list ({e}); delete it if no job of it is queued") from None


def write_state(path, state: dict) -> None:
    """Atomic (temp file + os.replace): a killed `sweep.py run` never leaves half a job list."""
    files.atomic_write_json(path, state)


def _stamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def job_states(job_ids, log_folder=None) -> dict[str, str]:
    """{job id: SLURM state} from squeue (which also lists jobs that ended less than MinJobAge ago). A job
    SLURM has forgotten is COMPLETED or FAILED from submitit's result file in log_folder, else GONE."""
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return {}
    p = _run(["squeue", "-h", "--states=all", "-j", ",".join(ids), "-o", "%i|%T"])
    if p.returncode != 0 and "Invalid job id" not in p.stderr:  # that one means: none of them is known
        raise SlurmError(f"squeue failed (is slurmctld up?): {p.stderr.strip()}")
    states = dict(line.split("|", 1) for line in p.stdout.split() if "|" in line)
    for j in ids:
        if j not in states:
            states[j] = _ended_state(j, log_folder)
    return {j: states[j] for j in ids}


def _ended_state(job_id: str, log_folder) -> str:
    if log_folder is None:
        return "GONE"
    result = Path(str(log_folder).replace("%j", job_id)) / f"{job_id}_0_result.pkl"
    try:
        with open(result, "rb") as f:
            import pickle

            outcome = pickle.load(f)[0]  # submitit writes ("success", value) or ("error", traceback text)
    except Exception:  # no file: killed, cancelled or lost before the callable returned
        return "GONE"
    return "COMPLETED" if outcome == "success" else "FAILED"


def cell_states(state_path) -> dict[str, dict]:
    """{cell: {"job_id", "state", "submitted", "log"}} for every cell in the state file (for `status`)."""
    st = read_state(state_path)
    cells = st.get("cells", {})
    states = job_states([c["job_id"] for c in cells.values()], st.get("log_folder"))
    return {name: {"job_id": c["job_id"], "state": states[c["job_id"]], "submitted": c["submitted"],
                   "log": str(log_path(st.get("log_folder"), c["job_id"]))} for name, c in cells.items()}


def log_path(log_folder, job_id: str) -> Path:
    """The job's stdout (submitit's <id>_0_log.out; stderr is beside it as .err)."""
    return Path(str(log_folder).replace("%j", str(job_id))) / f"{job_id}_0_log.out"


def cells_to_submit(cells: list[Cell], state_path, is_done: Callable[[Cell], bool]) -> list[Cell]:
    """The cells to (re)submit: not done (is_done reads the run folder) and without a job that is still
    queued or running. A cancelled, failed, timed-out-for-good or forgotten job's cell is resubmitted."""
    jobs = cell_states(state_path)
    return [c for c in cells if not is_done(c) and (c.name not in jobs or jobs[c.name]["state"] not in ACTIVE)]


def submit_cells(cells: list[Cell], opts: SlurmOptions, log_folder, state_path) -> dict[str, str]:
    """Submit one job per cell (job name = cell name); returns {cell: job id}. The options and the cluster
    are checked first, and a cell whose job is still queued or running is refused, so that two jobs never
    write one run folder. The state file is rewritten after each submission."""
    part = check_cluster(opts)
    st = read_state(state_path)
    st["log_folder"] = str(log_folder)
    busy = {n: s for n, s in cell_states(state_path).items() if s["state"] in ACTIVE and n in {c.name for c in cells}}
    if busy:
        n, s = next(iter(busy.items()))
        raise SlurmError(f"cell {n} already has job {s['job_id']} ({s['state']}); cancel it first or leave it out")
    ex = _executor(opts, Path(log_folder), part)
    out = {}
    for c in cells:
        ex.update_parameters(name=c.name)
        try:
            job = ex.submit(CellJob(c.fn, c.args, c.kwargs))
        except (RuntimeError, subprocess.SubprocessError) as e:  # submitit's FailedJobError: sbatch said no
            raise SlurmError(f"sbatch refused cell {c.name} ({len(out)} of {len(cells)} cells submitted before it, "
                             f"recorded in {state_path}): {e}") from None
        old = st["cells"].get(c.name)
        earlier = (old.get("earlier", []) + [old["job_id"]]) if old else []
        st["cells"][c.name] = {"job_id": str(job.job_id), "submitted": _stamp(), "run_dir": str(c.run_dir),
                               "earlier": earlier}
        write_state(state_path, st)
        out[c.name] = str(job.job_id)
    return out


def submit_analyze(fn: Callable, args: tuple, opts: SlurmOptions, log_folder, state_path,
                   name: str = "analyze") -> str:
    """One job running fn(*args) once every cell job in the state file has ended, however it ended
    (afterany: the analysis covers the cells that are done). It takes no GPU. A previous analyze job still
    waiting is cancelled first, so there is one. Returns the job id."""
    st = read_state(state_path)
    prev = st.get("analyze")
    if prev and job_states([prev["job_id"]]).get(prev["job_id"]) in ACTIVE:
        _run(["scancel", prev["job_id"]])
    # Only jobs SLURM still knows can be named in a dependency (sbatch rejects a forgotten id); the
    # others have ended, which is what afterany waits for.
    ids = [c["job_id"] for c in st.get("cells", {}).values()]
    after = [j for j, s in job_states(ids).items() if s != "GONE"]
    a_opts = dataclasses.replace(opts, gpus_per_cell=0, max_requeue=0)
    ex = _executor(a_opts, Path(log_folder), check_cluster(a_opts))
    ex.update_parameters(name=name, **({"slurm_dependency": "afterany:" + ":".join(after)} if after else {}))
    job = ex.submit(CellJob(fn, args))
    st["analyze"] = {"job_id": str(job.job_id), "submitted": _stamp(), "after": after}
    write_state(state_path, st)
    return str(job.job_id)


def cancel(state_path, names=None) -> list[str]:
    """scancel the queued/running jobs of these cells (all cells and the analyze job when names is None);
    returns the job ids cancelled. The run folders keep their complete checkpoints for the next run."""
    st = read_state(state_path)
    cells = st.get("cells", {})
    unknown = [n for n in (names or []) if n not in cells]
    if unknown:
        raise SlurmError(f"cell {unknown[0]}: no job recorded in {state_path}")
    ids = [cells[n]["job_id"] for n in (names if names is not None else cells)]
    if names is None and st.get("analyze"):
        ids.append(st["analyze"]["job_id"])
    live = [j for j, s in job_states(ids).items() if s in ACTIVE]
    if live:
        p = _run(["scancel", *live])
        if p.returncode != 0:
            raise SlurmError(f"scancel {' '.join(live)} failed: {p.stderr.strip()}")
    return live


def wait(job_ids, timeout_s: float = 3600, poll_s: float = 1.0, log_folder=None) -> dict[str, str]:
    """Poll until none of the jobs is active (or timeout_s passes); their last states."""
    end = time.time() + timeout_s
    while True:
        states = job_states(job_ids, log_folder)
        if not any(s in ACTIVE for s in states.values()) or time.time() > end:
            return states
        time.sleep(poll_s)


def sbatch_works() -> str | None:
    """None when this machine can submit jobs, else why not (for tests and a friendly CLI message)."""
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH (tools/slurm_cluster.sh sets up a one-node SLURM cluster, as root)"
    p = _run(["sinfo", "-h", "-o", "%P"])
    if p.returncode != 0 or not p.stdout.strip():
        return f"sinfo lists no partition: {p.stderr.strip() or 'no partition'} (is slurmctld up?)"
    return None
