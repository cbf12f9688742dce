"""How much of an R^2 is measurement: a bootstrap over the questions each checkpoint was scored on.

Each resample draws, with replacement, every run's own train questions (PreMemAcc and train accuracy
are means over them) and the test questions (test accuracy is a mean over them; the same draw for every
run, since the runs share their test questions), recomputes every point, and recomputes R^2 against
y = x. The threshold stays the one analyze chose: the interval is the spread that question sampling
alone puts on R^2, not the uncertainty of the calibration. Percentile interval, 95% by default.
"""
from __future__ import annotations

import numpy as np

from premem_kit.analysis.rundata import RunData
from premem_kit.metric import premem_loglog, r2_identity

DEFAULT_RESAMPLES = 1000


def question_bootstrap(runs: list[RunData], t: float, calibration: set[str] | None, resamples: int = DEFAULT_RESAMPLES,
                       seed: int = 0, level: float = 0.95) -> dict | None:
    """Percentile intervals of R^2 (PreMemAcc and train accuracy against test accuracy; over all points
    and, with calibration runs, over the held-out points), or None when a run lacks per-question test
    records. Points are the (run, checkpoint) pairs with a test accuracy, as in analyze."""
    if resamples <= 0 or any(r.test_matrix is None for r in runs):
        return None
    rng = np.random.default_rng(seed)
    union = sorted({q for r in runs for q in r.test_ids})
    where = [np.searchsorted(union, r.test_ids) for r in runs]
    premem = [premem_loglog(r.acc, r.ll, t) for r in runs]
    held = np.concatenate([np.full(int((~np.isnan(r.test_acc)).sum()), calibration is None or r.name not in calibration)
                           for r in runs])
    stats = {k: [] for k in ("r2", "train_acc_r2", "r2_heldout", "train_acc_r2_heldout")}
    for _ in range(resamples):
        test_w = np.bincount(rng.integers(0, len(union), len(union)), minlength=len(union)).astype(float)
        px, ptr, py = [], [], []
        for r, pm, w_idx in zip(runs, premem, where):
            train_w = np.bincount(rng.integers(0, r.acc.shape[1], r.acc.shape[1]), minlength=r.acc.shape[1])
            pts = ~np.isnan(r.test_acc)
            tw = test_w[w_idx]
            px.append(pm[pts] @ train_w / train_w.sum())
            ptr.append(r.acc[pts] @ train_w / train_w.sum())
            py.append(r.test_matrix[pts] @ tw / tw.sum() if tw.sum() else np.full(int(pts.sum()), np.nan))
        px, ptr, py = np.concatenate(px), np.concatenate(ptr), np.concatenate(py)
        stats["r2"].append(r2_identity(py, px))
        stats["train_acc_r2"].append(r2_identity(py, ptr))
        if calibration is not None and held.any():
            stats["r2_heldout"].append(r2_identity(py[held], px[held]))
            stats["train_acc_r2_heldout"].append(r2_identity(py[held], ptr[held]))
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out = {"resamples": resamples, "seed": seed, "level": level,
           "what": "questions resampled (each run's train questions; the shared test questions), threshold fixed"}
    for k, v in stats.items():
        v = np.asarray(v, dtype=float)
        v = v[np.isfinite(v)]
        if v.size:
            out[k] = [float(np.percentile(v, lo)), float(np.percentile(v, hi))]
    return out
