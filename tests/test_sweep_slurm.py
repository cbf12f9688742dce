"""sweep.py on SLURM, end to end: a tiny grid (the tiny model, 2 cells) submitted with `--executor slurm`
to the real SLURM of tools/slurm_cluster.sh, watched with `status`, one job cancelled mid-training,
resubmitted (only that cell, resuming from its checkpoint), analyzed by the dependent job; its records and
analysis equal a local run's of the same cells. And bad SLURM options or `slurm:` sections: exit 2,
naming the key, before anything is written or submitted.

The SLURM tests run when `sbatch` works and say why they are skipped otherwise (the library's own tests,
with a stand-in cell, are in test_slurm.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import ROOT, tiny_cfg
from premem_kit.core import config, runs
from premem_kit.grids import grid_slurm, slurm
from premem_kit.grids.grid import load_grid

why_not = slurm.sbatch_works()
needs_slurm = pytest.mark.skipif(why_not is not None, reason=f"no SLURM to submit to: {why_not}")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # the jobs inherit it (sbatch --export=ALL)


def sweep(*args, cwd, env=ENV, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write_grid(tmp_path, root, slurm_section: str, cells: str = "  - {num_epochs: 1}\n", base="configs/demo.yaml"):
    p = tmp_path / "g.yaml"
    p.write_text(f"base: {base}\nmodel_name: tiny\nruns_root: {root}\n{slurm_section}"
                 f"analyze_args: [--threshold, '5.0']\ncells:\n{cells}")
    return p


def jobs_named(names) -> list[str]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-o", "%j"], capture_output=True, text=True).stdout
    return [n for n in out.split() if n in set(names)]


def wait_for(pred, timeout_s: float, what: str, poll_s: float = 0.2):
    end = time.time() + timeout_s
    while not (v := pred()):
        assert time.time() < end, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(poll_s)
    return v


def status_rows(g, cwd) -> dict:
    r = sweep("status", g, "--json", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return {row["cell"]: row for row in json.loads(r.stdout)}


def records_of(run) -> dict:
    return {p.name: pd.read_parquet(p) for p in sorted((run / "records").glob("*.parquet"))}


def summary_of(root) -> dict:
    s = json.loads((root / "analysis" / "summary.json").read_text())
    return {"points": s["points"], "runs": [{k: v for k, v in r.items() if k != "path"} for r in s["runs"]],
            "threshold": s["threshold_loglog"], "n_points": s["n_points"]}


@needs_slurm
def test_a_tiny_grid_through_slurm_equals_the_local_run(tmp_path, tiny_model):
    base = tmp_path / "base.yaml"
    base.write_text(config.dump(tiny_cfg(tiny_model, tmp_path / "unused", eval_train_examples=4,
                                         eval_test_examples=2, eval_max_new_tokens=8, lora_dropout=0.0)))
    root, local = tmp_path / "slurm_runs", tmp_path / "local_runs"
    # cell b: 2 epochs of 32 steps (128 examples), a checkpoint after each: seconds of training after its
    # first checkpoint, when it is cancelled
    g = write_grid(tmp_path, root, "slurm: {cpus_per_cell: 1, mem_gb: 2, time_min: 10}\n",
                   "  - {name: a, num_epochs: 1, learning_rate: 1.0e-3}\n"
                   "  - {name: b, num_epochs: 2, learning_rate: 2.0e-3, max_train_examples: 128, "
                   "micro_batch_size: 1}\n", base=base)
    t0 = time.time()
    # the same cells with the local executor, meanwhile (compared at the end)
    local_run = subprocess.Popen([sys.executable, str(ROOT / "sweep.py"), "run", str(g), "--runs-root", str(local)],
                                 cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    r = sweep("run", g, "--executor", "slurm", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    state = slurm.read_state(root / "_sweep" / "slurm" / "jobs.json")
    ids = {n: c["job_id"] for n, c in state["cells"].items()}
    assert sorted(ids) == ["a", "b"] and "0 done, 0 queued or running, 2 to submit" in r.stdout
    assert f"a: job {ids['a']}" in r.stdout and f"b: job {ids['b']}" in r.stdout
    assert state["analyze"]["after"] == [ids["a"], ids["b"]]
    assert "partition debug, 1 CPU, 2 GB, 10 min per cell" in r.stdout  # the grid's slurm: section ...
    sbatch = (root / "_sweep" / "slurm" / ids["b"] / f"{ids['b']}_submission.sh").read_text()
    assert all(f"#SBATCH {x}\n" in sbatch for x in ("--job-name=b", "--mem=2GB", "--time=10", "--cpus-per-task=1"))
    # a local run of these cells now would give them two writers: refused
    r = sweep("run", g, "--no-analyze", cwd=tmp_path)
    assert r.returncode == 2 and "has a SLURM job queued or running" in r.stderr, r.stderr

    # watch: b's job runs; cancel it once b has its first checkpoint
    wait_for(lambda: status_rows(g, tmp_path)["b"]["slurm"]["state"] == "RUNNING", 240, "b's job to start", 0.5)
    rows = status_rows(g, tmp_path)
    assert rows["b"]["slurm"]["job_id"] == ids["b"] and rows["b"]["state"] in ("pending", "partial")
    wait_for(lambda: runs.complete_checkpoints(root / "b"), 240, "cell b's first checkpoint", poll_s=0.05)
    r = sweep("cancel", g, "--only", "b", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"cancelled job {ids['b']}", r.stdout + r.stderr
    assert wait_for(lambda: slurm.job_states([ids["b"]])[ids["b"]] not in slurm.ACTIVE, 60, "the cancel") \
        and slurm.job_states([ids["b"]])[ids["b"]] == "CANCELLED"
    rows = status_rows(g, tmp_path)
    assert rows["b"]["state"] == "partial" and not rows["b"]["trained"] and rows["b"]["checkpoints"] == 1
    assert rows["b"]["slurm"]["state"] == "CANCELLED"

    # resubmit: only b (a is done or still running); b resumes from its checkpoint; a new analysis job
    r = sweep("run", g, "--executor", "slurm", cwd=tmp_path)
    assert r.returncode == 0 and "1 to submit" in r.stdout and "  a: job" not in r.stdout, r.stdout + r.stderr
    state = slurm.read_state(root / "_sweep" / "slurm" / "jobs.json")
    b2, aid = state["cells"]["b"]["job_id"], state["analyze"]["job_id"]
    assert state["cells"]["b"]["earlier"] == [ids["b"]] and state["cells"]["a"]["job_id"] == ids["a"]
    r = sweep("run", g, "--executor", "slurm", cwd=tmp_path)  # b queued or running: nothing to submit
    assert r.returncode == 0 and "0 to submit" in r.stdout and slurm.read_state(
        root / "_sweep" / "slurm" / "jobs.json")["cells"]["b"]["job_id"] == b2

    end = slurm.wait([ids["a"], b2, aid], timeout_s=300, poll_s=0.5, log_folder=state["log_folder"])
    assert end == {ids["a"]: "COMPLETED", b2: "COMPLETED", aid: "COMPLETED"}, end
    r = sweep("status", g, cwd=tmp_path)
    assert r.returncode == 0 and "done 2, partial 0, pending 0" in r.stdout, r.stdout + r.stderr
    assert [line.split()[-2:] for line in r.stdout.splitlines()[2:5]] == \
        [[ids["a"], "COMPLETED"], [b2, "COMPLETED"], [aid, "COMPLETED"]], r.stdout
    log = slurm.log_path(state["log_folder"], b2).read_text()
    assert f"b: training (resuming, {rows['b']['checkpoints']} checkpoints done)" in log, log
    assert "Job completed successfully" in log
    steps = [json.loads(x)["step"] for x in (root / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 65))  # every optimizer step once: resumed, not restarted
    timings = [json.loads(x) for x in (root / "_sweep" / "timings.jsonl").read_text().splitlines()]
    assert sorted((t["cell"], t["slurm_job"], t["ok"]) for t in timings) == \
        sorted([("a", ids["a"], True), ("b", ids["b"], False), ("b", b2, True)])
    r = sweep("cancel", g, cwd=tmp_path)  # every job of the grid: none is left
    assert r.returncode == 0 and r.stdout.strip() == "no job of grid g is queued or running", r.stdout + r.stderr
    slurm_s = time.time() - t0

    out = local_run.communicate(timeout=300)[0]
    assert local_run.returncode == 0 and "premem.py analyze over 2 finished cells" in out, out[-3000:]
    for cell in ("a", "b"):
        mine, theirs = records_of(root / cell), records_of(local / cell)
        assert sorted(mine) == sorted(theirs) and len(mine) == {"a": 2, "b": 4}[cell]
        for name in mine:
            pd.testing.assert_frame_equal(mine[name], theirs[name], obj=f"{cell}/{name}")
    assert summary_of(root) == summary_of(local)
    print(f"SLURM part {slurm_s:.0f} s, all {time.time() - t0:.0f} s")


def test_a_bad_slurm_section_stops_every_command_before_anything_is_written(tmp_path):
    root = tmp_path / "runs"
    for section, msg in [
            ("slurm: {mem_gb: lots}\n", "g.yaml: slurm: mem_gb: expected a number of GB > 0, got 'lots'"),
            ("slurm: {gpus: 1}\n", "g.yaml: slurm: gpus: unknown option (known: account, cpus_per_cell"),
            ("slurm: [1, 2]\n", "g.yaml: slurm: expected a mapping of option: value"),
            ("slurm: {sbatch_flags: --time=5}\n", "g.yaml: slurm: sbatch_flags: --time is set by the kit")]:
        g = write_grid(tmp_path, root, section)
        for cmd in (["run", g, "--executor", "slurm"], ["status", g], ["run", g]):
            r = sweep(*cmd, cwd=tmp_path)
            assert r.returncode == 2 and r.stderr.startswith("sweep.py: error: ") and msg in r.stderr, (cmd, r.stderr)
    g = write_grid(tmp_path, root, "slurm: {partition: gpu, time_min: 600, sbatch_flags: --qos=high --exclusive}\n")
    grid = load_grid(g)
    assert grid["slurm"] == {"partition": "gpu", "time_min": 600, "sbatch_flags": "--qos=high --exclusive"}
    # the command line over the section; sbatch flags merged, the command line's winning
    cli = {"partition": "debug", "time_min": None, "mem_gb": 3.5, "sbatch_flags": "--qos=low --comment=x"}
    assert grid_slurm.options(grid, cli) == slurm.SlurmOptions(
        partition="debug", time_min=600, mem_gb=3.5, sbatch_flags={"qos": "low", "exclusive": True, "comment": "x"})
    for args, msg in [
            (["--partition", "x"], "--partition is a SLURM option: add --executor slurm"),
            (["--executor", "slurm", "--gpus", "0"], "--gpus is for --executor local; on SLURM, --gpus-per-cell"),
            (["--executor", "slurm", "--time-min", "0"], "argument --time-min: expected a whole number >= 1"),
            (["--executor", "slurm", "--sbatch-flags=--output=x"], "sbatch_flags: --output is set by the kit")]:
        r = sweep("run", g, *args, cwd=tmp_path)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
    r = sweep("analyze", g, cwd=tmp_path)  # the analysis job's function, here: nothing done yet
    assert r.returncode == 2 and f"{g}: no cell is done yet in {root}: nothing to analyze" in r.stderr, r.stderr
    # no SLURM on this machine (no sbatch on PATH): said so, nothing written
    r = sweep("run", g, "--executor", "slurm", cwd=tmp_path, env={**ENV, "PATH": str(tmp_path / "empty")})
    assert r.returncode == 2 and "--executor slurm: no sbatch on PATH" in r.stderr, r.stderr
    assert not root.exists()


@needs_slurm
def test_an_unknown_partition_or_resources_no_node_has_are_refused_before_submitting(tmp_path):
    root = tmp_path / "runs"
    name = f"refused-{os.getpid()}"  # unique: another test run may be submitting at the same time
    cells = f"  - {{name: {name}, num_epochs: 1}}\n"
    for section, args, msg in [
            ("slurm: {partition: nope}\n", [], "partition: no partition 'nope' on this cluster (sinfo lists: "),
            ("slurm: {partition: debug}\n", ["--partition", "nope2"], "partition: no partition 'nope2'"),
            ("", ["--gpus-per-cell", "1"], "gpus_per_cell: 1 GPUs, but partition"),
            ("slurm: {cpus_per_cell: 10000}\n", [], "cpus_per_cell: 10000 CPUs, but partition")]:
        g = write_grid(tmp_path, root, section, cells)
        r = sweep("run", g, "--executor", "slurm", *args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.startswith("sweep.py: error: ") and msg in r.stderr, r.stderr
        assert r.stdout == "" and not root.exists() and jobs_named([name]) == []
