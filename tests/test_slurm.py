"""premem_kit.grids.slurm against a real SLURM and real submitit: submit, watch, cancel one job mid-run,
resubmit only the unfinished cell, a dependent analyze job, the state file, the job logs, and the option
errors raised before anything is submitted.

Runs when `sbatch` works (tools/slurm_cluster.sh brings up a one-node cluster in ~15 s, as root). The
cells here are a tiny callable that "trains" by writing one file per step and resumes from the steps it
finds, like the kit's cells resume from their last complete checkpoint; a grid of the kit's own cells
runs through SLURM (sweep.py run --executor slurm) in test_sweep_slurm.py.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("submitit", reason="submitit is not installed (pip install submitit)")

from premem_kit.grids import slurm  # noqa: E402

HERE = Path(__file__).resolve().parent
why_not = slurm.sbatch_works()
pytestmark = pytest.mark.skipif(why_not is not None, reason=f"no SLURM to submit to: {why_not}")


N_C = 25  # cell c's steps of 0.4 s: longer than KillWait after the cancel, so it cannot finish then


def step_cell(run_dir: str, n_steps: int, step_s: float) -> str:
    """A cell: one file per finished step ("checkpoint"); a rerun continues after the last one."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    first = len(list(run.glob("step_*")))
    with open(run / "attempts.txt", "a") as f:
        f.write(f"job {os.environ.get('SLURM_JOB_ID')} from step {first}\n")
    print(f"cell {run.name}: {'resuming at step ' + str(first) if first else 'from scratch'}", flush=True)
    for i in range(first, n_steps):
        time.sleep(step_s)
        (run / f"step_{i}").write_text("ok")
        print(f"cell {run.name}: step {i + 1}/{n_steps} done", flush=True)
    (run / "DONE").write_text(os.environ.get("SLURM_JOB_ID", ""))
    return str(run)


def summarize(root: str) -> list[str]:
    """The 'analysis': which cells are done, into root/analysis.txt."""
    done = sorted(p.parent.name for p in Path(root).glob("*/DONE"))
    (Path(root) / "analysis.txt").write_text("\n".join(done) + "\n")
    return done


def opts(**kw) -> slurm.SlurmOptions:
    # The job must import this module to unpickle step_cell: put tests/ on its PYTHONPATH (a `setup` line,
    # as a real grid would load modules or a venv).
    return slurm.parse_options({"cpus_per_cell": 1, "mem_gb": 1, "time_min": 5,
                                "setup": [f"export PYTHONPATH={HERE}:$PYTHONPATH"], **kw})


def jobs_named(name: str) -> list[str]:
    """The jobs of that name SLURM knows (ended ones too, for MinJobAge)."""
    return subprocess.run(["squeue", "-h", "--states=all", "-n", name, "-o", "%i"],
                          capture_output=True, text=True).stdout.split()


def wait_for(pred, timeout_s: float, what: str):
    end = time.time() + timeout_s
    while not pred():
        assert time.time() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_submit_watch_cancel_resubmit_analyze(tmp_path):
    root = tmp_path / "runs"
    state, logs = root / "_sweep" / "slurm" / "jobs.json", root / "_sweep" / "slurm" / "%j"
    cells = [slurm.Cell(n, root / n, step_cell, (str(root / n), steps, 0.4))
             for n, steps in (("a", 2), ("b", 2), ("c", N_C))]
    is_done = lambda c: (c.run_dir / "DONE").exists()  # noqa: E731

    ids = slurm.submit_cells(cells, opts(), logs, state)
    assert sorted(ids) == ["a", "b", "c"] and len(set(ids.values())) == 3
    st = slurm.read_state(state)
    assert {n: c["job_id"] for n, c in st["cells"].items()} == ids
    assert st["log_folder"] == str(logs) and all(c["earlier"] == [] for c in st["cells"].values())
    names = subprocess.run(["squeue", "-h", "-j", ",".join(ids.values()), "-o", "%j"],
                           capture_output=True, text=True).stdout.split()
    assert sorted(names) == ["a", "b", "c"]  # job name = cell name

    # cancel c mid-run (two of its steps written), then let a and b finish. submitit ignores the SIGTERM
    # of scancel, so c runs on until SLURM's SIGKILL (KillWait, 5 s on the test cluster) while the job
    # shows COMPLETING, an active state: c is not resubmitted before the old job has stopped writing.
    wait_for(lambda: (root / "c" / "step_1").exists(), 40, "cell c's second step")
    assert slurm.cancel(state, ["c"]) == [ids["c"]]
    end = slurm.wait(ids.values(), timeout_s=40, poll_s=0.3, log_folder=logs)
    assert end == {ids["a"]: "COMPLETED", ids["b"]: "COMPLETED", ids["c"]: "CANCELLED"}
    assert slurm.cell_states(state)["c"]["state"] == "CANCELLED"
    assert not is_done(cells[2]) and 2 <= len(list((root / "c").glob("step_*"))) < N_C

    # a rerun submits only the unfinished cell; the cell resumes after its last step
    todo = slurm.cells_to_submit(cells, state, is_done)
    assert [c.name for c in todo] == ["c"]
    new = slurm.submit_cells(todo, opts(), logs, state)
    assert slurm.read_state(state)["cells"]["c"]["earlier"] == [ids["c"]]
    assert slurm.cells_to_submit(cells, state, is_done) == []  # queued/running: not submitted twice
    with pytest.raises(slurm.SlurmError, match="cell c already has job"):
        slurm.submit_cells(todo, opts(), logs, state)

    # the analysis waits for every cell job (afterany), then runs once
    aid = slurm.submit_analyze(summarize, (str(root),), opts(), logs, state)
    assert slurm.read_state(state)["analyze"]["after"] == [ids["a"], ids["b"], new["c"]]
    assert slurm.wait([aid, new["c"]], timeout_s=40, poll_s=0.3)[aid] == "COMPLETED"
    assert (root / "analysis.txt").read_text().split() == ["a", "b", "c"]
    attempts = (root / "c" / "attempts.txt").read_text().splitlines()
    assert attempts[0] == f"job {ids['c']} from step 0" and attempts[1].startswith(f"job {new['c']} from step ")
    assert int(attempts[1].rsplit(" ", 1)[1]) >= 2  # resumed, not restarted
    assert sorted(p.name for p in (root / "c").glob("step_*")) == sorted(f"step_{i}" for i in range(N_C))

    # the logs: submitit's lines (INFO on stdout, warnings on stderr) and the cell's output, where
    # log_path says; the cancelled job's stderr has SLURM's word for it
    log = slurm.log_path(logs, new["c"]).read_text()
    assert "cell c: resuming at step" in log and f"cell c: step {N_C}/{N_C} done" in log
    assert "submitit INFO" in log and "Job completed successfully" in log
    err = slurm.log_path(logs, ids["c"]).with_suffix(".err").read_text()
    assert f"JOB {ids['c']} ON " in err and "CANCELLED AT" in err


def test_a_timed_out_or_preempted_job_is_requeued_and_resumes(tmp_path):
    """SLURM sends USR2 (--signal=USR2@90: 90 s before the time limit, or on preemption); submitit
    calls CellJob.checkpoint and `scontrol requeue`s the job: same job id, same log (appended), and the
    callable runs again, resuming after its last step."""
    root = tmp_path / "runs"
    state, logs = root / "jobs.json", root / "slurm" / "%j"
    cell = slurm.Cell("r", root / "r", step_cell, (str(root / "r"), 10, 0.4))
    jid = slurm.submit_cells([cell], opts(), logs, state)["r"]
    wait_for(lambda: (root / "r" / "step_1").exists(), 40, "cell r's second step")
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)
    wait_for(lambda: slurm.job_states([jid])[jid] == "PENDING", 20, "the requeued job")
    assert slurm.cells_to_submit([cell], state, lambda c: False) == []  # requeued: SLURM's business
    # SLURM holds a requeued job for 120 s (BeginTime); start it now rather than wait
    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=True)
    assert slurm.wait([jid], timeout_s=40, poll_s=0.3) == {jid: "COMPLETED"}
    first, second = (root / "r" / "attempts.txt").read_text().splitlines()
    assert first == f"job {jid} from step 0" and second.startswith(f"job {jid} from step ")
    assert int(second.rsplit(" ", 1)[1]) >= 2
    log = slurm.log_path(logs, jid).read_text()
    assert "Calling checkpoint method." in log and f"Requeued job {jid}" in log and "cell r: step 10/10 done" in log


def test_a_failing_cell_fails_its_job_and_is_due_again(tmp_path):
    state, logs = tmp_path / "jobs.json", tmp_path / "%j"
    cell = slurm.Cell("bad", tmp_path / "bad", step_cell, (str(tmp_path / "bad"), "three", 0.0))
    jid = slurm.submit_cells([cell], opts(), logs, state)["bad"]
    assert slurm.wait([jid], timeout_s=30, poll_s=0.3) == {jid: "FAILED"}
    assert "TypeError" in slurm.log_path(logs, jid).with_suffix(".err").read_text()
    assert slurm.cells_to_submit([cell], state, lambda c: False) == [cell]


def test_a_forgotten_job_is_judged_by_submitits_result_file(tmp_path):
    logs = tmp_path / "%j"
    assert slurm.job_states(["987654321"], logs) == {"987654321": "GONE"}
    (tmp_path / "987654321").mkdir()
    with open(tmp_path / "987654321" / "987654321_0_result.pkl", "wb") as f:
        pickle.dump(("success", None), f)
    assert slurm.job_states(["987654321"], logs) == {"987654321": "COMPLETED"}


def test_bad_options_are_refused_before_anything_is_submitted(tmp_path):
    state, logs = tmp_path / "jobs.json", tmp_path / "%j"
    name = f"refused-{os.getpid()}"  # unique: another test run may be submitting at the same time
    cell = slurm.Cell(name, tmp_path / "x", step_cell, (str(tmp_path / "x"), 1, 0.0))
    for kw, msg in [({"partition": "nope"}, r"partition: no partition 'nope' on this cluster \(sinfo lists: "),
                    ({"cpus_per_cell": 10_000}, "cpus_per_cell: 10000 CPUs, but partition"),
                    ({"mem_gb": 100_000}, "mem_gb: 100000 GB, but partition"),
                    ({"gpus_per_cell": 1}, "gpus_per_cell: 1 GPUs, but partition .* have 0")]:
        with pytest.raises(slurm.SlurmError, match=msg):
            slurm.submit_cells([cell], opts(**kw), logs, state)
    assert jobs_named(name) == [] and not state.exists() and not list(tmp_path.iterdir())
    # what only sbatch can refuse is a SlurmError too
    with pytest.raises(slurm.SlurmError, match=f"sbatch refused cell {name} .*Invalid node name"):
        slurm.submit_cells([cell], opts(sbatch_flags={"nodelist": "no-such-node"}), logs, state)
    assert jobs_named(name) == []

    for bad, msg in [({"cpus_per_cell": 0}, r"slurm: cpus_per_cell: expected a whole number >= 1, got 0"),
                     ({"mem_gb": "lots"}, "slurm: mem_gb: expected a number of GB > 0, got 'lots'"),
                     ({"time_min": -5}, "slurm: time_min: expected a whole number of minutes >= 1, got -5"),
                     ({"gpus_per_cell": True}, "slurm: gpus_per_cell: expected a whole number >= 0, got True"),
                     ({"partition": "a b"}, "slurm: partition: expected a partition name, got 'a b'"),
                     ({"gpus": 1}, r"slurm: gpus: unknown option \(known: account, cpus_per_cell"),
                     ({"sbatch_flags": "--output=x"}, "sbatch_flags: --output is set by the kit"),
                     ({"sbatch_flags": {"time": 5}}, "sbatch_flags: --time is set by the kit; use time_min"),
                     ({"sbatch_flags": "qos=high"}, "sbatch_flags: 'qos=high': expected --name=value"),
                     ({"setup": [1]}, r"slurm: setup: expected shell lines")]:
        with pytest.raises(slurm.SlurmError, match=msg):
            slurm.parse_options(bad)
    with pytest.raises(slurm.SlurmError, match="grids/g.yaml: slurm: time_min"):
        slurm.parse_options({"time_min": "1h"}, where="grids/g.yaml: slurm: ")
    o = slurm.parse_options({"partition": "debug", "sbatch_flags": "--qos=high --exclusive", "setup": "module load x"})
    assert o.sbatch_flags == {"qos": "high", "exclusive": True} and o.setup == ("module load x",)
    assert [slurm.time_limit_minutes(t) for t in ("infinite", "30", "1:30:00", "2-00:00:00", "1-12", "10:30")] == \
        [float("inf"), 30, 90, 2880, 2160, 10.5]
