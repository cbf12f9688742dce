"""Benchmark `premem.py analyze` on synthetic run folders (not a test).

    python bench/bench_premem.py [--runs 13] [--ckpts 6] [--examples 7473] [--keep DIR]

Builds --runs run folders with --ckpts checkpoints each (the first is step 0, the base model) of
--examples train examples (5 samples of text each) and 1319 test examples in a temp folder (building
is not timed), then times `python premem.py analyze RUNS/* --out OUT` with the default 50-point
loglog sweep, end to end in a fresh process, and reports the time without figure rendering from
summary.json's timing_s. Target: under 10 s on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from premem_kit.core import files
from premem_kit.core import records
from premem_kit.core import runs
from premem_kit.metric import predicted_test_accuracy

LRS = [5e-7, 2e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4]
PLANTED = -2.4


def text_pool(rng, n=2000, chars=120):
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789 +-*/=.,"))
    return pa.array(["".join(rng.choice(letters, chars)) for _ in range(n)], type=pa.string())


def build(root: Path, n_runs: int, n_ckpts: int, n_ex: int, n_test: int = 1319, n_samples: int = 5, seed=0):
    rng = np.random.default_rng(seed)
    pool = text_pool(rng)
    difficulty = rng.normal(0, 1.5, n_ex)  # shared across runs, like a fixed train set
    ll0 = rng.normal(-0.5, 0.6, n_ex)  # base-model loglog perplexity
    train_ids = [f"synth/train/{i}" for i in range(n_ex)]
    test_ids = [f"synth/test/{i}" for i in range(n_test)]
    dirs = []
    for r in range(n_runs):
        lr = LRS[r % len(LRS)]
        num_epochs = (3, 6)[r % 2]
        speed = np.log10(lr / 1e-7) / 3.5  # bigger learning rate: learns and memorizes faster
        steps = np.linspace(0, 58 * num_epochs, n_ckpts).round().astype(int)
        run = root / f"synth_{num_epochs}ep_lr{lr:g}"
        dirs.append(run)
        cfg = dict(task="gsm8k", model="synthetic", learning_rate=lr, num_epochs=num_epochs, subset="full",
                   batch_size=128, run_name=run.name)
        files.atomic_write_text(runs.config_path(run), yaml.safe_dump(cfg, sort_keys=False))
        acc_all, ppl_all = [], []
        for k, step in enumerate(steps):
            prog = k / max(1, n_ckpts - 1) * speed
            p_correct = 1 / (1 + np.exp(difficulty + 1.0 - 3.0 * prog))
            types = np.where(rng.random((n_ex, n_samples)) < p_correct[:, None], 0, rng.integers(1, 3, (n_ex, n_samples)))
            ll = ll0 - 3.0 * prog + rng.normal(0, 0.3, n_ex)
            ppl = np.exp(np.exp(ll))
            samples = pa.ListArray.from_arrays(
                pa.array(np.arange(0, n_ex * n_samples + 1, n_samples, dtype=np.int32)),
                pc.take(pool, pa.array(rng.integers(0, len(pool), n_ex * n_samples))),
            )
            epoch = float(step) / 58
            tab = records.record_table(train_ids, int(step), epoch, "train", types, ppl, np.full(n_ex, 120),
                                       samples=samples)
            records.write_table(runs.record_path(run, int(step), "train"), tab)
            acc_all.append((types == 0).mean(axis=1))
            ppl_all.append(ppl)
            # test accuracy tracks the planted PreMemAcc, plus sampling noise
            target = predicted_test_accuracy(np.array(acc_all), np.array(ppl_all), threshold_loglog=PLANTED)[-1]
            ttypes = np.where(rng.random((n_test, n_samples)) < target, 0, 1)
            tsamples = pa.ListArray.from_arrays(
                pa.array(np.arange(0, n_test * n_samples + 1, n_samples, dtype=np.int32)),
                pc.take(pool, pa.array(rng.integers(0, len(pool), n_test * n_samples))),
            )
            tab = records.record_table(test_ids, int(step), epoch, "test", ttypes, samples=tsamples)
            records.write_table(runs.record_path(run, int(step), "test"), tab)
        print(f"  built {run.name}: steps {steps.tolist()}", flush=True)
    return dirs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=13)
    ap.add_argument("--ckpts", type=int, default=6)
    ap.add_argument("--examples", type=int, default=7473)
    ap.add_argument("--keep", type=Path, help="build into this folder and keep it (default: a temp folder)")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        root = args.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_premem_")
        root = Path(tmp.name)
    runs_dir, out = root / "runs", root / "analysis"
    print(f"building {args.runs} runs x {args.ckpts} checkpoints x {args.examples} examples in {root} ...")
    t0 = time.perf_counter()
    build(runs_dir, args.runs, args.ckpts, args.examples)
    print(f"built in {time.perf_counter() - t0:.1f} s (not timed)")

    cmd = [sys.executable, str(ROOT / "premem.py"), "analyze", str(runs_dir / "*"), "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stdout, proc.stderr)
        raise SystemExit(f"analyze failed with status {proc.returncode}")
    print(proc.stdout.rstrip())
    s = json.loads((out / "summary.json").read_text())
    tm = s["timing_s"]
    print(f"planted threshold {PLANTED}; calibrated {s['threshold_loglog']:.3f}; {s['n_points']} points")
    print(f"analyze, end to end (fresh process, imports, 50-point sweep, tables, figures): {wall:.2f} s")
    print(f"  inside analyze(): total {tm['total']:.2f} s = load {tm['load']:.2f} + metric/sweep {tm['metric']:.2f}"
          f" + tables {tm['tables']:.2f} + figures {tm['figures']:.2f}")
    print(f"  excluding figure rendering: {wall - tm['figures']:.2f} s end to end, "
          f"{tm['total'] - tm['figures']:.2f} s inside analyze()")
    print(f"  target < 10 s: {'OK' if wall < 10 else 'MISSED'}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
