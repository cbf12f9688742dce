"""Pre-memorization train accuracy (PreMemAcc), Kang et al. (ICML 2025): the metric, numpy only.

Read this file first. For a train example i and checkpoint m (trained checkpoints in step order):

    acc[m, i]        fraction of the sampled completions that are correct
    ppl[m, i]        teacher-forced perplexity of the target solution
    memorized[m, i]  = ppl[m, i] < p                       (p: the perplexity threshold)
    masked[m, i]     = acc[m, i] * 1[not memorized[m, i]]
    PreMemAcc[m, i]  = min( max_{1 <= m' <= m} masked[m', i],  acc[m, i] )

A run's mean PreMemAcc over its train examples at checkpoint m predicts its test accuracy at m.

Threshold convention. The authors threshold log(log(perplexity)) ("loglog"):

    loglog = log(log(ppl))        ppl = exp(exp(loglog))
    e.g. loglog -2.5 <=> ppl 1.0855;  loglog -2.3 <=> ppl 1.105;  loglog 0 <=> ppl e

memorized <=> loglog(ppl) < t. A perplexity <= 1 has loglog -inf, so it is memorized under every
finite t. A NaN perplexity (not computed) counts as memorized, as in the authors' code (`loglog >= t`
is False for NaN): it adds nothing to the running max.
"""
from __future__ import annotations

import math

import numpy as np

# The authors' fixed memorization thresholds (loglog) per task: the Figure 4 / Figure 5 / Figure 7 value
# of their notebooks (GSM8K -2.3: gsm8k_analyze.ipynb, gsm8k_orig_line_baselines.ipynb; MATH -1.7:
# math_analyze.ipynb, gsm8k_orig_perplexity_gpt4o.ipynb). The default wherever the kit does not calibrate.
TASK_THRESHOLDS = {"gsm8k": -2.3, "math": -1.7}


def loglog(ppl) -> np.ndarray:
    """log(log(ppl)) elementwise; -inf where ppl <= 1, NaN where ppl is NaN."""
    ppl = np.asarray(ppl, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(np.log(ppl))
    return np.where(ppl <= 1.0, -np.inf, out)


def ppl_from_loglog(t):
    """Perplexity threshold equivalent to a loglog threshold: exp(exp(t))."""
    with np.errstate(over="ignore"):
        out = np.exp(np.exp(np.asarray(t, dtype=np.float64)))
    return float(out) if np.ndim(out) == 0 else out


def loglog_from_ppl(p) -> float:
    """loglog threshold equivalent to a perplexity threshold p (-inf for p <= 1: nothing memorized)."""
    return float(loglog(float(p)))


def resolve_threshold(threshold_ppl=None, threshold_loglog=None) -> float:
    """The loglog threshold from exactly one of the two forms; a finite number or ValueError."""
    if (threshold_ppl is None) == (threshold_loglog is None):
        raise ValueError("give exactly one of threshold_ppl and threshold_loglog")
    if threshold_loglog is not None:
        t = float(threshold_loglog)
        if not math.isfinite(t):
            raise ValueError(f"the loglog threshold must be a finite number, got {threshold_loglog}")
        return t
    p = float(threshold_ppl)
    if not (p > 0 and math.isfinite(p)):  # p <= 1 is allowed: nothing counts as memorized
        raise ValueError(f"the perplexity threshold must be a finite number > 0, got {threshold_ppl}")
    return loglog_from_ppl(p)


def premem_loglog(acc: np.ndarray, ll: np.ndarray, t: float) -> np.ndarray:
    """PreMemAcc[ckpt, ex] from accuracy and loglog perplexity, both [ckpt, ex], threshold t (loglog)."""
    masked = np.where(ll >= t, acc, 0.0)  # not memorized <=> loglog >= t (NaN: memorized)
    np.maximum.accumulate(masked, axis=0, out=masked)
    return np.minimum(masked, acc)


def premem_from_arrays(acc, ppl, threshold_ppl=None, *, threshold_loglog=None) -> np.ndarray:
    """PreMemAcc per checkpoint and example.

    acc[ckpt, ex]: accuracy of the samples; ppl[ckpt, ex]: target perplexity; rows are the trained
    checkpoints in step order. The threshold is a perplexity (memorized <=> ppl < threshold_ppl) or,
    keyword-only, a loglog value (memorized <=> log(log(ppl)) < threshold_loglog).
    """
    acc = np.asarray(acc, dtype=np.float64)
    ppl = np.asarray(ppl, dtype=np.float64)
    if acc.ndim == 1:
        acc, ppl = acc[:, None], ppl[:, None]
    if acc.shape != ppl.shape or acc.ndim != 2:
        raise ValueError(f"acc and ppl must both be [ckpt, ex]; got {acc.shape} and {ppl.shape}")
    return premem_loglog(acc, loglog(ppl), resolve_threshold(threshold_ppl, threshold_loglog))


def predicted_test_accuracy(acc, ppl, threshold_ppl=None, *, threshold_loglog=None) -> np.ndarray:
    """Predicted test accuracy per checkpoint: mean PreMemAcc over the train examples, shape [ckpt]."""
    return premem_from_arrays(acc, ppl, threshold_ppl, threshold_loglog=threshold_loglog).mean(axis=1)


def premem_sweep(acc, ll, thresholds, *, max_elems: int = 40_000_000) -> np.ndarray:
    """Mean PreMemAcc over examples for every loglog threshold: returns [threshold, ckpt].

    Vectorized over thresholds x checkpoints x examples, in chunks bounded by max_elems cells.
    """
    acc = np.asarray(acc, dtype=np.float64)
    ll = np.asarray(ll, dtype=np.float64)
    th = np.asarray(thresholds, dtype=np.float64).ravel()
    c, n = acc.shape
    out = np.empty((th.size, c))
    chunk = max(1, max_elems // max(1, c * n))
    for s in range(0, th.size, chunk):
        m = (ll[None] >= th[s:s + chunk, None, None]) * acc[None]  # [T, C, N] masked accuracy
        np.maximum.accumulate(m, axis=1, out=m)
        np.minimum(m, acc[None], out=m)
        out[s:s + chunk] = m.mean(axis=2)
    return out


def r2_identity(y, x):
    """R^2 of y against the identity prediction y = x: 1 - sum((y-x)^2) / sum((y - mean y)^2).

    x may be [..., P] (e.g. one row per threshold); NaN when fewer than 2 points or y is constant.
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    sst = float(((y - y.mean()) ** 2).sum()) if y.size else 0.0
    res = ((y - x) ** 2).sum(axis=-1)
    out = np.full(np.shape(res), np.nan) if y.size < 2 or sst <= 0 else 1.0 - res / sst
    return float(out) if np.ndim(out) == 0 else out


def pearson_r(y, x):
    """Pearson correlation of y and x (x may be [..., P]); NaN when either is constant."""
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if y.size < 2:
        out = np.full(x.shape[:-1], np.nan)
    else:
        yc = y - y.mean()
        xc = x - x.mean(axis=-1, keepdims=True)
        den = np.sqrt((xc**2).sum(axis=-1) * (yc**2).sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(den > 0, (xc * yc).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)
    return float(out) if np.ndim(out) == 0 else out
