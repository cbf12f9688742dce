"""The memorization threshold: calibrated on runs, given, or read from an analyze summary.

Calibration picks the loglog grid point (default 50 points in [-5, 1]) that maximizes R^2 of test
accuracy against the identity prediction y = x, R^2 = 1 - sum((y - x)^2) / sum((y - mean y)^2), over
all (run, checkpoint with a test record) points, x being the run's mean PreMemAcc at that checkpoint.
"""
from __future__ import annotations

import fnmatch
import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd

from premem_kit.analysis.defaults import DEFAULT_SWEEP
from premem_kit.core.errors import warn
from premem_kit.metric import pearson_r, ppl_from_loglog, premem_sweep, r2_identity, resolve_threshold
from premem_kit.analysis.rundata import AnalysisError, RunData

# fewer (checkpoint, test accuracy) points than this and a calibrated threshold fits noise
MIN_CALIBRATION_POINTS = 6


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
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise AnalysisError(f"{p}: expected a JSON object with key threshold_loglog ({e})") from None
    if not isinstance(t, (int, float)):
        raise AnalysisError(f"{p}: threshold_loglog is {t!r}, expected a number")
    return float(t)


def run_threshold(runs: list[RunData], *, threshold_loglog=None, threshold_ppl=None,
                  threshold_from=None) -> tuple[float, str]:
    """(loglog threshold, where it came from) for commands on a few runs (robustness, priors): given as
    a loglog or perplexity value, read from an analyze summary.json, or else calibrated on `runs`."""
    if threshold_loglog is not None or threshold_ppl is not None:
        return given_threshold(threshold_ppl, threshold_loglog), "given"
    if threshold_from is not None:
        return threshold_from_summary(threshold_from), f"from {Path(threshold_from)}"
    try:
        t, _ = calibrate_threshold(runs)
    except AnalysisError as e:
        raise AnalysisError(f"{e}; give the threshold with --threshold / --threshold-ppl / --threshold-from") from None
    return t, "calibrated on " + ", ".join(r.name for r in runs)
