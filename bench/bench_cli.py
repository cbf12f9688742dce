"""How fast a script rejects a bad argument, against the cost of importing torch + transformers.

    .venv/bin/python bench/bench_cli.py [--repeat 3]

Target: every script answers a bad argument in well under 2 s, i.e. before the heavy libraries load
(their import alone is the ratio's denominator). Prints one line per case: median seconds and the ratio
to `import torch, transformers`.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = [
    ("python -c pass", ["-c", "pass"]),
    ("import torch, transformers", ["-c", "import torch, transformers"]),
    ("train.py configs/demo.yml (typo)", ["train.py", "configs/demo.yml"]),
    ("train.py CONFIG num_epochs=0", ["train.py", "configs/demo.yaml", "num_epochs=0"]),
    ("evaluate.py runs/typo", ["evaluate.py", "runs/typo"]),
    ("evaluate.py RUN --samples 0", ["evaluate.py", "runs/typo", "--samples", "0"]),
    ("premem.py analyze (no run)", ["premem.py", "analyze"]),
    ("curate.py select (no run)", ["curate.py", "select"]),
    ("sweep.py status grids/nope.yaml", ["sweep.py", "status", "grids/nope.yaml"]),
]


def timed(args, repeat: int) -> tuple[float, int]:
    times, code = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        code = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True).returncode
        times.append(time.perf_counter() - t0)
    return statistics.median(times), code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    results = [(name, *timed(args, a.repeat)) for name, args in CASES]
    heavy = results[1][1]
    print(f"{'case':36s} {'median s':>9} {'exit':>5} {'/ heavy import':>15}")
    for name, t, code in results:
        print(f"{name:36s} {t:>9.3f} {code:>5} {t / heavy:>15.2f}")


if __name__ == "__main__":
    main()
