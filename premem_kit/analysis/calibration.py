"""The memorization threshold: calibrated on runs, given, read from an analyze summary, or the task's.

Calibration picks the loglog grid point (default 50 points in [-5, 1]) that maximizes R^2 of test
accuracy against the identity prediction y = x, R^2 = 1 - sum((y - x)^2) / sum((y - mean y)^2), over
all (run, checkpoint with a test record) points, x being the run's mean PreMemAcc at that checkpoint.

The points are Figure 4's: every checkpoint of a full run; of a half or quarter run, the checkpoints at one
third, two thirds and the end of its training (figure4_points), as the authors plot them.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd

from premem_kit.analysis.defaults import DEFAULT_SWEEP
from premem_kit.core.errors import warn
from premem_kit.metric import TASK_THRESHOLDS, pearson_r, ppl_from_loglog, premem_sweep, r2_identity, resolve_threshold
from premem_kit.analysis.rundata import AnalysisError, RunData, as_float

# fewer (checkpoint, test accuracy) points than this and a calibrated threshold fits noise
MIN_CALIBRATION_POINTS = 6


# Figure 4's half and quarter runs: the checkpoints nearest these fractions of the run's training (epochs)
FIGURE4_FRACTIONS = (1 / 3, 2 / 3, 1.0)


def figure4_mask(run: RunData) -> np.ndarray:
    """Which of a run's checkpoints are Figure 4 points. A full run (or one whose subset is unknown): all.
    A half or quarter run: the checkpoints nearest one third, two thirds and all of its epochs. The authors
    plot their half and quarter runs at checkpoints [1, 3, 5] of 6 (gsm8k_analyze.ipynb, math_analyze.ipynb:
    epochs 2, 4, 6 of the 6-epoch half run, 4, 8, 12 of the 12-epoch quarter run), the optimizer steps of
    the 3-epoch full run's checkpoints; the rule by fractions carries that to any checkpoint spacing."""
    n = len(run.steps)
    if run.setting("subset") not in ("half", "quarter") or n == 0:
        return np.ones(n, dtype=bool)
    epochs = np.asarray(run.epochs, dtype=np.float64)
    total = as_float(run.setting("num_epochs")) or float(np.nanmax(epochs))
    mask = np.zeros(n, dtype=bool)
    for f in FIGURE4_FRACTIONS:
        mask[int(np.nanargmin(np.abs(epochs - f * total)))] = True
    return mask


def figure4_points(runs: list[RunData]) -> list[RunData]:
    """The runs with the test accuracy of every checkpoint that is not a Figure 4 point (figure4_mask) set
    to NaN: such a checkpoint still counts in PreMemAcc's running max, but is neither a calibration point
    nor a point of R^2 and the figures."""
    return [dataclasses.replace(r, test_acc=np.where(figure4_mask(r), r.test_acc, np.nan)) for r in runs]


def default_grid(lo=DEFAULT_SWEEP[0], hi=DEFAULT_SWEEP[1], n=DEFAULT_SWEEP[2]) -> np.ndarray:
    """The loglog threshold grid: n points from lo to hi."""
    if n < 1 or not lo <= hi:
        raise AnalysisError(f"bad sweep grid: min {lo}, max {hi}, points {n}")
    return np.linspace(lo, hi, int(n))


def sweep_runs(runs: list[RunData], grid) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Mean PreMemAcc at every grid threshold for every (run, checkpoint with a test record).

    Returns X[threshold, point], y[point] (test accuracy), train[point], run name per point.
    """
    xs, ys, trs, names = [], [], [], []
    for run in runs:
        have = ~np.isnan(run.test_acc)
        sw = premem_sweep(run.acc, run.ll, grid)  # [T, C]
        xs.append(sw[:, have])
        ys.append(run.test_acc[have])
        trs.append(run.acc.mean(axis=1)[have])
        names += [run.name] * int(have.sum())
    return np.concatenate(xs, axis=1), np.concatenate(ys), np.concatenate(trs), names


def calibrate_threshold(runs: list[RunData], grid=None) -> tuple[float, pd.DataFrame]:
    """Pick the loglog grid threshold maximizing identity R^2 (test acc vs mean PreMemAcc) over all
    (run, checkpoint) points of `runs`. Returns (threshold_loglog, sweep table)."""
    grid = default_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    X, y, _, _ = sweep_runs(runs, grid)
    r2 = r2_identity(y, X)
    if np.all(np.isnan(r2)):
        raise AnalysisError(
            f"cannot calibrate: R^2 is undefined on {len(y)} point(s) "
            "(need at least 2 checkpoints with test records and differing test accuracy)"
        )
    best = int(np.nanargmax(r2))
    table = pd.DataFrame(
        dict(threshold_loglog=grid, threshold_ppl=ppl_from_loglog(grid), r2=r2, pearson_r=pearson_r(y, X))
    )
    return float(grid[best]), table


def sweep_table(grid, X, y, calibration: np.ndarray, heldout_column: bool) -> pd.DataFrame:
    """R^2 and Pearson r per grid threshold on the calibration points (boolean mask over points),
    R^2 on all points, and (heldout_column) R^2 on the other points (NaN when there are none)."""
    cal = np.asarray(calibration, dtype=bool)
    table = pd.DataFrame(
        dict(
            threshold_loglog=grid,
            threshold_ppl=ppl_from_loglog(grid),
            r2=r2_identity(y[cal], X[:, cal]),
            pearson_r=pearson_r(y[cal], X[:, cal]),
            r2_all=r2_identity(y, X),
        )
    )
    if heldout_column:
        held = ~cal
        table["r2_heldout"] = r2_identity(y[held], X[:, held]) if held.any() else np.nan
    return table


def best_threshold(sweep: pd.DataFrame, n_points: int) -> float:
    """The grid threshold with the highest calibration R^2; warns when n_points are too few to trust."""
    r2 = sweep["r2"].to_numpy()
    if np.all(np.isnan(r2)):
        raise AnalysisError(
            f"cannot calibrate: R^2 is undefined on the {n_points} calibration point(s) "
            "(need at least 2 checkpoints with test records and differing test accuracy)"
        )
    if n_points < MIN_CALIBRATION_POINTS:
        warn(f"threshold calibrated on only {n_points} (checkpoint, test accuracy) point(s): with so "
             f"few the best threshold fits noise (the paper calibrates on 40+ points); pass --threshold "
             f"-2.3 (the authors' GSM8K/Llama3 value) or analyze more runs")
    return float(sweep["threshold_loglog"].to_numpy()[int(np.nanargmax(r2))])


def match_runs(runs: list[RunData], patterns) -> set[str]:
    """Names of the runs matching any of `patterns` (run names, folder names, paths or fnmatch globs);
    a pattern matching no run is an error."""
    chosen = set()
    for pat in patterns:
        hit = set()
        pres = Path(pat).resolve() if not glob.has_magic(pat) else None
        for r in runs:
            if (
                fnmatch.fnmatch(r.name, pat)
                or fnmatch.fnmatch(r.path.name, pat)
                or fnmatch.fnmatch(str(r.path), pat)
                or (pres is not None and r.path.resolve() == pres)
            ):
                hit.add(r.name)
        if not hit:
            raise AnalysisError(
                f"--calibrate-on {pat!r} matches none of the analyzed runs: " + ", ".join(r.name for r in runs)
            )
        chosen |= hit
    return chosen


def points_table(runs: list[RunData], premem_means: list[np.ndarray]) -> pd.DataFrame:
    """One row per (run, checkpoint with a test record): train, mean PreMemAcc and test accuracy,
    and the run's settings. premem_means[k] is run k's mean PreMemAcc per checkpoint."""
    rows = []
    for run, pm in zip(runs, premem_means):
        train_acc = run.acc.mean(axis=1)
        for k in range(len(run.steps)):
            if np.isnan(run.test_acc[k]):
                continue
            rows.append(
                dict(
                    run=run.name,
                    step=int(run.steps[k]),
                    epoch=float(run.epochs[k]),
                    train_acc=float(train_acc[k]),
                    premem_acc=float(pm[k]),
                    test_acc=float(run.test_acc[k]),
                    lr=run.learning_rate,
                    num_epochs=run.setting("num_epochs"),
                    subset=run.setting("subset"),
                    n_train=int(run.acc.shape[1]),
                    n_test=int(run.n_test[k]),
                )
            )
    return pd.DataFrame(rows)


def given_threshold(threshold_ppl=None, threshold_loglog=None) -> float:
    """metric.resolve_threshold, with a bad value (NaN, inf, ppl <= 0) as an AnalysisError."""
    try:
        return resolve_threshold(threshold_ppl, threshold_loglog)
    except ValueError as e:
        raise AnalysisError(str(e)) from None


def threshold_from_summary(path) -> float:
    """threshold_loglog of a summary.json written by premem.py analyze."""
    p = Path(path)
    try:
        t = json.loads(p.read_text())["threshold_loglog"]
    except FileNotFoundError:
        raise AnalysisError(f"{p}: no such file (expected the summary.json of premem.py analyze)") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise AnalysisError(f"{p}: not a text file ({type(e).__name__}); expected the summary.json of premem.py "
                            f"analyze") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise AnalysisError(f"{p}: expected a JSON object with key threshold_loglog ({e})") from None
    if not isinstance(t, (int, float)):
        raise AnalysisError(f"{p}: threshold_loglog is {t!r}, expected a number")
    return float(t)


def task_threshold(runs: list[RunData]) -> tuple[float, str]:
    """The authors' fixed threshold of the runs' task (metric.TASK_THRESHOLDS: GSM8K -2.3, MATH -1.7)."""
    tasks = sorted({str(r.setting("task")) for r in runs})
    if len(tasks) != 1 or tasks[0] not in TASK_THRESHOLDS:
        raise AnalysisError(f"no default memorization threshold for task(s) {tasks} (known: "
                            f"{', '.join(TASK_THRESHOLDS)}); give --threshold / --threshold-ppl / --threshold-from, "
                            "or --calibrate")
    return TASK_THRESHOLDS[tasks[0]], f"{tasks[0]} default (the authors' {TASK_THRESHOLDS[tasks[0]]})"


def run_threshold(runs: list[RunData], *, threshold_loglog=None, threshold_ppl=None,
                  threshold_from=None, calibrate=False) -> tuple[float, str]:
    """(loglog threshold, where it came from) for commands on a few runs (robustness, priors): given as
    a loglog or perplexity value, read from an analyze summary.json, calibrated on `runs` (calibrate, the
    kit's earlier default), or else the task's fixed value, as the authors' Figures 5 and 7."""
    if threshold_loglog is not None or threshold_ppl is not None:
        return given_threshold(threshold_ppl, threshold_loglog), "given"
    if threshold_from is not None:
        return threshold_from_summary(threshold_from), f"from {Path(threshold_from)}"
    if not calibrate:
        return task_threshold(runs)
    try:
        t, _ = calibrate_threshold(runs)
    except AnalysisError as e:
        raise AnalysisError(f"{e}; give the threshold with --threshold / --threshold-ppl / --threshold-from") from None
    return t, "calibrated on " + ", ".join(r.name for r in runs)
