"""Pre-memorization train accuracy (PreMemAcc), Kang et al. (ICML 2025), "What Do Learning Dynamics
Reveal About Generalization in LLM Reasoning?".

The metric, exactly as in the paper
-----------------------------------
For a train example i and checkpoint m (checkpoints ordered by optimizer step):

    acc[m, i]        fraction of the sampled completions that are correct
    ppl[m, i]        teacher-forced perplexity of the target solution
    memorized[m, i]  = ppl[m, i] < p                       (p: the perplexity threshold)
    masked[m, i]     = acc[m, i] * 1[not memorized[m, i]]
    PreMemAcc[m, i]  = min( max_{m' <= m} masked[m', i],  acc[m, i] )

The run's mean PreMemAcc over its train examples at checkpoint m is its predicted test accuracy at m.
Step 0 (the untrained base model), when a run has records for it, is a checkpoint like any other: it
is a point of its own and takes part in the max over m' <= m (analyze --no-step0 drops it).

Threshold convention
--------------------
The authors threshold log(log(perplexity)) ("loglog"); both forms are accepted:

    loglog = log(log(ppl))        ppl = exp(exp(loglog))
    e.g. loglog -2.5 <=> ppl 1.0855;  loglog -2.4 <=> ppl 1.0950;  loglog 0 <=> ppl e = 2.718

memorized <=> loglog(ppl) < loglog threshold <=> ppl < exp(exp(loglog threshold)). A perplexity <= 1
has log(log) = -inf, so it counts as memorized under every finite loglog threshold. A NaN train
perplexity (not computed) counts as memorized, as in the authors' code (loglog >= t is False for NaN):
such a record contributes nothing to the max; analyze warns about it.

Command line
------------
    python premem.py analyze RUN_DIR... --out DIR [--threshold LOGLOG | --threshold-ppl P |
                                                   --calibrate-on RUN...] [--fragile-t 0.75]
    python premem.py import-published SRC_CKPTS_DIR OUT_DIR [--model NAME] [--force]

analyze writes DIR/summary.json, DIR/sweep.csv, DIR/premem_examples.{parquet,csv} and
DIR/figures/{fig1,fig3,fig4,r2_vs_threshold}.{png,pdf}. Without --threshold/--threshold-ppl/
--calibrate-on the threshold is calibrated on all runs: the loglog grid point (default 50 points in
[-5, 1]) that maximizes R^2 of test accuracy against the identity prediction y = x,
R^2 = 1 - sum((y - x)^2) / sum((y - mean y)^2), over all (run, checkpoint) points.

Python API (also for a Trainer callback): premem_from_arrays, predicted_test_accuracy, premem_sweep,
r2_identity, pearson_r, loglog, ppl_from_loglog, load_run, calibrate_threshold, analyze,
import_published.
"""
from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

import records

DEFAULT_SWEEP = (-5.0, 1.0, 50)  # loglog grid: min, max, number of points
DEFAULT_FRAGILE_T = 0.75
DEFAULT_MODEL = "meta-llama/Meta-Llama-3-8B"
FIG3_MAX_EXAMPLES = 200
THRESHOLD_HELP = """threshold convention:
  memorized <=> perplexity < P <=> log(log(perplexity)) < X, with P = exp(exp(X)), X = log(log(P)).
  --threshold takes X (the authors' convention), --threshold-ppl takes P; e.g. X = -2.5 <=> P = 1.0855.
  A perplexity <= 1 has log(log) = -inf: memorized under every finite X. NaN perplexity: memorized.
  PreMemAcc_m = min(max_{m' <= m} acc_m' * 1[not memorized_m'], acc_m); step 0 counts when present."""


class PremError(Exception):
    """Bad input (the message names the file or folder); the CLI prints it and exits with status 2."""


class NoRecordsError(PremError):
    """A folder has no train record files."""


# fewer (checkpoint, test accuracy) points than this and analyze warns that a calibrated threshold is noise
MIN_CALIBRATION_POINTS = 6


def _warn(msg: str) -> None:
    print(f"premem.py: warning: {msg}", file=sys.stderr)


# ----------------------------------------------------------------------------- the metric


def loglog(ppl) -> np.ndarray:
    """log(log(ppl)) elementwise; -inf where ppl <= 1, NaN where ppl is NaN."""
    ppl = np.asarray(ppl, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.log(np.log(ppl))
    out = np.where(ppl <= 1.0, -np.inf, out)
    return out


def ppl_from_loglog(t) -> float | np.ndarray:
    """Perplexity threshold equivalent to a loglog threshold: exp(exp(t))."""
    with np.errstate(over="ignore"):
        out = np.exp(np.exp(np.asarray(t, dtype=np.float64)))
    return float(out) if np.ndim(out) == 0 else out


def loglog_from_ppl(p) -> float:
    """loglog threshold equivalent to a perplexity threshold p (-inf for p <= 1: nothing memorized)."""
    return float(loglog(float(p)))


def _resolve_threshold(threshold_ppl=None, threshold_loglog=None) -> float:
    if (threshold_ppl is None) == (threshold_loglog is None):
        raise ValueError("give exactly one of threshold_ppl and threshold_loglog")
    if threshold_loglog is not None:
        t = float(threshold_loglog)
        if math.isnan(t):
            raise ValueError("threshold_loglog is NaN")
        return t
    p = float(threshold_ppl)
    if not p > 0:
        raise ValueError(f"threshold_ppl must be > 0, got {threshold_ppl}")
    return loglog_from_ppl(p)


def _premem_ll(acc: np.ndarray, ll: np.ndarray, t: float) -> np.ndarray:
    masked = np.where(ll >= t, acc, 0.0)  # not memorized <=> loglog >= t (NaN: memorized)
    np.maximum.accumulate(masked, axis=0, out=masked)
    return np.minimum(masked, acc)


def premem_from_arrays(acc, ppl, threshold_ppl=None, *, threshold_loglog=None) -> np.ndarray:
    """PreMemAcc per checkpoint and example.

    acc[ckpt, ex]: accuracy of the samples; ppl[ckpt, ex]: target perplexity; rows are checkpoints in
    step order (include step 0 as the first row if it should take part in the max). The threshold is
    a perplexity (memorized <=> ppl < threshold_ppl) or, keyword-only, a loglog value
    (memorized <=> log(log(ppl)) < threshold_loglog). Returns premem[ckpt, ex] =
    min(max_{m' <= m} acc[m'] * 1[not memorized[m']], acc[m]).
    """
    acc = np.asarray(acc, dtype=np.float64)
    ppl = np.asarray(ppl, dtype=np.float64)
    if acc.ndim == 1:
        acc, ppl = acc[:, None], ppl[:, None]
    if acc.shape != ppl.shape or acc.ndim != 2:
        raise ValueError(f"acc and ppl must both be [ckpt, ex]; got {acc.shape} and {ppl.shape}")
    t = _resolve_threshold(threshold_ppl, threshold_loglog)
    return _premem_ll(acc, loglog(ppl), t)


def predicted_test_accuracy(acc, ppl, threshold_ppl=None, *, threshold_loglog=None) -> np.ndarray:
    """Predicted test accuracy per checkpoint: mean PreMemAcc over the train examples, shape [ckpt].

    Same arguments as premem_from_arrays. A Trainer callback keeps acc/ppl of every evaluated
    checkpoint so far (the max runs over all earlier ones) and reads the last entry.
    """
    return premem_from_arrays(acc, ppl, threshold_ppl, threshold_loglog=threshold_loglog).mean(axis=1)


def premem_sweep(acc, ll, thresholds, *, max_elems: int = 40_000_000) -> np.ndarray:
    """Mean PreMemAcc over examples for every loglog threshold: returns [threshold, ckpt].

    acc, ll: [ckpt, ex] accuracy and loglog perplexity (see loglog()). Vectorized over
    thresholds x checkpoints x examples, in chunks of thresholds bounded by max_elems cells.
    """
    acc = np.asarray(acc, dtype=np.float64)
    ll = np.asarray(ll, dtype=np.float64)
    th = np.asarray(thresholds, dtype=np.float64).ravel()
    c, n = acc.shape
    out = np.empty((th.size, c))
    chunk = max(1, max_elems // max(1, c * n))
    for s in range(0, th.size, chunk):
        tt = th[s : s + chunk, None, None]
        m = (ll[None] >= tt) * acc[None]  # [T, C, N] masked accuracy
        np.maximum.accumulate(m, axis=1, out=m)
        np.minimum(m, acc[None], out=m)
        out[s : s + chunk] = m.mean(axis=2)
    return out


def r2_identity(y, x) -> np.ndarray | float:
    """R^2 of y against the identity prediction y = x: 1 - sum((y-x)^2) / sum((y - mean y)^2).

    x may be [..., P] (e.g. one row per threshold); NaN when fewer than 2 points or y is constant.
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    sst = float(((y - y.mean()) ** 2).sum()) if y.size else 0.0
    res = ((y - x) ** 2).sum(axis=-1)
    if y.size < 2 or sst <= 0:
        out = np.full(np.shape(res), np.nan)
    else:
        out = 1.0 - res / sst
    return float(out) if np.ndim(out) == 0 else out


def pearson_r(y, x) -> np.ndarray | float:
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


# ----------------------------------------------------------------------------- loading runs

_NEEDED = ["id", "step", "epoch", "accuracy", "perplexity"]


@dataclass
class RunData:
    """One run's train/test statistics, checkpoints (rows) in step order."""

    name: str
    path: Path
    config: dict
    steps: np.ndarray  # [C] steps with train records
    epochs: np.ndarray  # [C]
    ids: np.ndarray  # [N] train example ids (common to all checkpoints)
    acc: np.ndarray  # [C, N] train accuracy
    ppl: np.ndarray  # [C, N] train target perplexity
    test_acc: np.ndarray  # [C] mean test accuracy, NaN where the checkpoint has no test record
    n_test: np.ndarray = field(default=None)  # [C] number of test examples (0 when none)

    @property
    def ll(self) -> np.ndarray:
        return loglog(self.ppl)


def _read_columns(path: Path, columns: list[str]) -> pa.Table:
    try:
        names = pq.read_schema(path).names
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise PremError(f"{path}: cannot read Parquet record file ({type(e).__name__}: {e})") from e
    missing = [c for c in records.RECORD_COLUMNS if c not in names]
    if missing:
        raise PremError(f"{path}: not a record file, missing columns {missing}")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as e:  # noqa: BLE001
        raise PremError(f"{path}: cannot read Parquet record file ({type(e).__name__}: {e})") from e


def load_run(run_dir, variant: str = "original", include_step0: bool = True, name: str | None = None) -> RunData:
    """Read a run folder's train and test records (only the columns the metric needs).

    Checkpoints are the steps with a train record of `variant`, sorted by step; step 0 is one of
    them unless include_step0 is False. Train examples are aligned by id; ids missing from some
    checkpoint are dropped (with a warning). Raises NoRecordsError / PremError naming the file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NoRecordsError(f"{run_dir}: not a folder")
    recs = [r for r in records.list_records(run_dir) if r[2] == variant]
    train = {s: p for s, sp, _, p in recs if sp == "train" and (include_step0 or s != 0)}
    test = {s: p for s, sp, _, p in recs if sp == "test" and (include_step0 or s != 0)}
    if not train:
        raise NoRecordsError(
            f"{run_dir}: no train records (expected {run_dir}/records/step-XXXXXX.train.{variant}.parquet)"
        )
    cfg_path = run_dir / "config.yaml"
    config = {}
    if cfg_path.exists():
        try:
            config = records.read_run_config(run_dir)
        except yaml.YAMLError as e:
            raise PremError(f"{cfg_path}: invalid YAML ({e})") from e
        if not isinstance(config, dict):
            raise PremError(f"{cfg_path}: expected a mapping, got {type(config).__name__}")
    else:
        _warn(f"{cfg_path}: missing; learning rate / epochs unknown for this run")

    steps = sorted(train)
    ids0 = None
    accs, ppls, epochs, idlists = [], [], [], []
    for s in steps:
        p = train[s]
        t = _read_columns(p, _NEEDED)
        if t.num_rows == 0:
            raise PremError(f"{p}: record file has no rows")
        ids = np.asarray(t.column("id").to_pylist(), dtype=object)
        fsteps = t.column("step").to_numpy()
        if (fsteps != s).any():
            raise PremError(f"{p}: column step holds {sorted(set(fsteps.tolist()))[:3]}, file name says {s}")
        acc = t.column("accuracy").to_numpy(zero_copy_only=False).astype(np.float64)
        ppl = t.column("perplexity").to_numpy(zero_copy_only=False).astype(np.float64)
        if np.isnan(acc).any():
            raise PremError(f"{p}: {int(np.isnan(acc).sum())} rows have NaN accuracy")
        if ((acc < 0) | (acc > 1)).any():
            raise PremError(f"{p}: accuracy outside [0, 1]")
        if np.isnan(ppl).any():
            _warn(f"{p}: {int(np.isnan(ppl).sum())} train rows have NaN perplexity; counted as memorized")
        if len(set(ids.tolist())) != len(ids):
            raise PremError(f"{p}: duplicate ids")
        epochs.append(float(t.column("epoch")[0].as_py()))
        accs.append(acc)
        ppls.append(ppl)
        idlists.append(ids)
        if ids0 is None:
            ids0 = ids

    # align all checkpoints on the ids every checkpoint has, in the first checkpoint's order
    if all(len(x) == len(ids0) and (x == ids0).all() for x in idlists):
        common = ids0
        A, P = np.stack(accs), np.stack(ppls)
    else:
        common_set = set(ids0.tolist())
        for x in idlists[1:]:
            common_set &= set(x.tolist())
        common = np.asarray([i for i in ids0.tolist() if i in common_set], dtype=object)
        if len(common) == 0:
            raise PremError(f"{run_dir}: train records of different checkpoints share no example ids")
        _warn(
            f"{run_dir}: train records cover different examples across checkpoints; using the "
            f"{len(common)} ids present at every checkpoint (of {max(len(x) for x in idlists)})"
        )
        idx = pd.Index(common)
        A = np.empty((len(steps), len(common)))
        P = np.empty_like(A)
        for k, (ids, acc, ppl) in enumerate(zip(idlists, accs, ppls)):
            pos = pd.Index(ids).get_indexer(idx)
            A[k], P[k] = acc[pos], ppl[pos]

    test_acc = np.full(len(steps), np.nan)
    n_test = np.zeros(len(steps), dtype=np.int64)
    for s, p in test.items():
        if s not in train:
            _warn(f"{p}: test record without a train record at step {s}; ignored")
            continue
        t = _read_columns(p, ["accuracy"])
        a = t.column("accuracy").to_numpy(zero_copy_only=False).astype(np.float64)
        if a.size == 0:
            raise PremError(f"{p}: record file has no rows")
        if np.isnan(a).any():
            raise PremError(f"{p}: {int(np.isnan(a).sum())} rows have NaN accuracy")
        k = steps.index(s)
        test_acc[k], n_test[k] = a.mean(), a.size
    return RunData(
        name=name or run_dir.name,
        path=run_dir,
        config=config,
        steps=np.asarray(steps, dtype=np.int64),
        epochs=np.asarray(epochs),
        ids=common,
        acc=A,
        ppl=P,
        test_acc=test_acc,
        n_test=n_test,
    )


def expand_run_dirs(patterns) -> list[Path]:
    """Expand glob patterns (quoted or not) into folders, keeping the order and dropping repeats."""
    out, seen = [], set()
    for pat in patterns:
        hits = sorted(glob.glob(str(pat))) if glob.has_magic(str(pat)) else [str(pat)]
        if not hits:
            _warn(f"{pat}: matches nothing")
        for h in hits:
            p = Path(h)
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def load_runs(run_dirs, variant="original", include_step0=True, progress=True) -> list[RunData]:
    """Load every run folder; folders without records are skipped with a warning."""
    dirs = expand_run_dirs(run_dirs)
    names = [p.name for p in dirs]
    runs, skipped = [], []
    for p in tqdm(dirs, desc="loading runs", unit="run", disable=not progress, file=sys.stderr):
        name = p.name if names.count(p.name) == 1 else f"{p.parent.name}/{p.name}"
        try:
            runs.append(load_run(p, variant=variant, include_step0=include_step0, name=name))
        except NoRecordsError as e:
            _warn(f"skipping {e}")
            skipped.append(str(p))
    if not runs:
        raise NoRecordsError(
            "no run folder with records among: " + ", ".join(str(p) for p in dirs)
            + f" (each needs records/step-XXXXXX.train.{variant}.parquet)"
        )
    return runs


# ----------------------------------------------------------------------------- calibration


def _cfg(run: RunData, key, default=None):
    v = run.config.get(key, default)
    return default if v is None else v


def _points(runs: list[RunData], premem_means: list[np.ndarray]) -> pd.DataFrame:
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
                    lr=_num(_cfg(run, "learning_rate")),
                    num_epochs=_cfg(run, "num_epochs"),
                    subset=_cfg(run, "subset"),
                    n_train=int(run.acc.shape[1]),
                    n_test=int(run.n_test[k]),
                )
            )
    return pd.DataFrame(rows)


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


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
        raise PremError(
            f"cannot calibrate: R^2 is undefined on {len(y)} point(s) "
            "(need at least 2 checkpoints with test records and differing test accuracy)"
        )
    best = int(np.nanargmax(r2))
    table = pd.DataFrame(
        dict(threshold_loglog=grid, threshold_ppl=ppl_from_loglog(grid), r2=r2, pearson_r=pearson_r(y, X))
    )
    return float(grid[best]), table


def default_grid(lo=DEFAULT_SWEEP[0], hi=DEFAULT_SWEEP[1], n=DEFAULT_SWEEP[2]) -> np.ndarray:
    if n < 1 or not lo <= hi:
        raise PremError(f"bad sweep grid: min {lo}, max {hi}, points {n}")
    return np.linspace(lo, hi, int(n))


# ----------------------------------------------------------------------------- analyze


def _clean(v):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _match_runs(runs: list[RunData], patterns) -> set[str]:
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
            raise PremError(
                f"--calibrate-on {pat!r} matches none of the analyzed runs: " + ", ".join(r.name for r in runs)
            )
        chosen |= hit
    return chosen


def example_table(runs: list[RunData], t: float, fragile_t: float) -> pd.DataFrame:
    """Per-example table at each run's last checkpoint (one row per run x train example)."""
    frames = []
    for run in runs:
        ll = run.ll
        pm = _premem_ll(run.acc, ll, t)
        mem = ll < t
        first = np.where(mem.any(axis=0), run.steps[np.argmax(mem, axis=0)], -1)
        frames.append(
            pd.DataFrame(
                dict(
                    run=run.name,
                    id=run.ids.astype(str),
                    step=int(run.steps[-1]),
                    epoch=float(run.epochs[-1]),
                    premem_acc=pm[-1],
                    accuracy=run.acc[-1],
                    perplexity=run.ppl[-1],
                    max_accuracy=run.acc.max(axis=0),
                    memorized=mem[-1],
                    first_memorized_step=first.astype(np.int64),
                    fragile=pm[-1] < fragile_t,
                )
            )
        )
    return pd.concat(frames, ignore_index=True)


def analyze(
    run_dirs,
    out,
    *,
    threshold_loglog: float | None = None,
    threshold_ppl: float | None = None,
    calibrate_on=None,
    grid=None,
    fragile_t: float = DEFAULT_FRAGILE_T,
    variant: str = "original",
    include_step0: bool = True,
    figures: bool = True,
    fig3_run: str | None = None,
    progress: bool = True,
    verbose: bool = True,
) -> dict:
    """Compute PreMemAcc for every run, choose/calibrate the threshold, write all outputs to `out`.

    Threshold: threshold_loglog or threshold_ppl if given; else calibrated on the runs matching
    `calibrate_on` (names, paths or fnmatch patterns), else on all runs. Returns the summary dict
    (also written to out/summary.json).
    """
    t0 = time.perf_counter()
    out = Path(out)
    if sum(x is not None for x in (threshold_loglog, threshold_ppl, calibrate_on)) > 1:
        raise PremError("give at most one of threshold_loglog, threshold_ppl, calibrate_on")
    if not 0 <= fragile_t <= 1:
        raise PremError(f"fragile threshold must be in [0, 1], got {fragile_t}")
    grid = default_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    runs = load_runs(run_dirs, variant=variant, include_step0=include_step0, progress=progress)
    t_load = time.perf_counter()

    X, y, train_x, pnames = sweep_runs(runs, grid)
    if len(y) == 0:
        raise PremError("no checkpoint has both train and test records: " + ", ".join(str(r.path) for r in runs))
    pnames = np.asarray(pnames, dtype=object)
    calib_names = _match_runs(runs, calibrate_on) if calibrate_on else {r.name for r in runs}
    cal = np.isin(pnames, list(calib_names))
    held = ~cal
    sweep = pd.DataFrame(
        dict(
            threshold_loglog=grid,
            threshold_ppl=ppl_from_loglog(grid),
            r2=r2_identity(y[cal], X[:, cal]),
            pearson_r=pearson_r(y[cal], X[:, cal]),
            r2_all=r2_identity(y, X),
        )
    )
    if calibrate_on:
        sweep["r2_heldout"] = r2_identity(y[held], X[:, held]) if held.any() else np.nan

    if threshold_loglog is not None or threshold_ppl is not None:
        t = _resolve_threshold(threshold_ppl, threshold_loglog)
        source = "given"
    else:
        if np.all(np.isnan(sweep["r2"].to_numpy())):
            raise PremError(
                f"cannot calibrate: R^2 is undefined on the {int(cal.sum())} calibration point(s) "
                "(need at least 2 checkpoints with test records and differing test accuracy)"
            )
        t = float(grid[int(np.nanargmax(sweep["r2"].to_numpy()))])
        source = "calibrated"
        n_cal = int(cal.sum())
        if n_cal < MIN_CALIBRATION_POINTS:
            _warn(f"threshold calibrated on only {n_cal} (checkpoint, test accuracy) point(s): with so "
                  f"few the best threshold fits noise (the paper calibrates on 40+ points); pass --threshold "
                  f"-2.3 (the authors' GSM8K/Llama3 value) or analyze more runs")
    p = ppl_from_loglog(t)

    premem_means = [_premem_ll(r.acc, r.ll, t).mean(axis=1) for r in runs]
    points = _points(runs, premem_means)
    points["calibration"] = points["run"].isin(calib_names)
    px, py, ptr = points["premem_acc"].to_numpy(), points["test_acc"].to_numpy(), points["train_acc"].to_numpy()
    c, h = points["calibration"].to_numpy(), ~points["calibration"].to_numpy()
    t_sweep = time.perf_counter()

    summary = dict(
        threshold_loglog=t,
        threshold_ppl=p,
        threshold_source=source,
        r2=r2_identity(py, px),
        pearson_r=pearson_r(py, px),
        train_acc_r2=r2_identity(py, ptr),
        train_acc_pearson_r=pearson_r(py, ptr),
        n_runs=len(runs),
        n_points=len(points),
    )
    if calibrate_on:
        summary.update(
            r2_calibration=r2_identity(py[c], px[c]),
            r2_heldout=r2_identity(py[h], px[h]) if h.any() else None,
            pearson_r_heldout=pearson_r(py[h], px[h]) if h.any() else None,
            train_acc_r2_heldout=r2_identity(py[h], ptr[h]) if h.any() else None,
            calibration_runs=sorted(calib_names),
            heldout_runs=sorted({r.name for r in runs} - calib_names),
        )
        if not h.any():
            _warn("--calibrate-on matches every analyzed run; no held-out points")
    summary.update(
        fragile_t=fragile_t,
        variant=variant,
        include_step0=include_step0,
        sweep_grid=dict(min=float(grid[0]), max=float(grid[-1]), points=int(grid.size)),
        convention=(
            "memorized <=> perplexity < threshold_ppl <=> log(log(perplexity)) < threshold_loglog; "
            "PreMemAcc_m = min(max_{m'<=m} acc_m' * 1[not memorized_m'], acc_m); step 0 counts as a "
            "checkpoint when present (include_step0)"
        ),
        runs=[
            dict(
                run=r.name,
                path=str(r.path),
                lr=_num(_cfg(r, "learning_rate")),
                num_epochs=_cfg(r, "num_epochs"),
                subset=_cfg(r, "subset"),
                task=_cfg(r, "task"),
                steps=r.steps.tolist(),
                n_train=int(r.acc.shape[1]),
                calibration=r.name in calib_names,
            )
            for r in runs
        ],
        points=points.to_dict(orient="records"),
        sweep=sweep.to_dict(orient="records"),
    )

    out.mkdir(parents=True, exist_ok=True)
    records.atomic_write_text(out / "sweep.csv", sweep.to_csv(index=False))
    ex = example_table(runs, t, fragile_t)
    records.atomic_write_parquet(out / "premem_examples.parquet", ex)
    records.atomic_write_text(out / "premem_examples.csv", ex.to_csv(index=False))
    t_tables = time.perf_counter()

    fig_files = []
    if figures:
        fig_files = make_figures(runs, points, sweep, summary, out / "figures", fig3_run=fig3_run)
    t_end = time.perf_counter()
    summary["files"] = ["summary.json", "sweep.csv", "premem_examples.parquet", "premem_examples.csv"] + [
        str(Path("figures") / f) for f in fig_files
    ]
    summary["timing_s"] = dict(
        load=t_load - t0,
        metric=t_sweep - t_load,
        tables=t_tables - t_sweep,
        figures=t_end - t_tables,
        total=t_end - t0,
    )
    summary = _clean(summary)
    records.atomic_write_json(out / "summary.json", summary)

    if verbose:
        _print_summary(summary, out)
    return summary


def _fmt(v, f=".4f"):
    return "n/a" if v is None else format(v, f)


def _print_summary(s: dict, out: Path) -> None:
    src = s["threshold_source"]
    if src == "calibrated":
        n_cal = len(s.get("calibration_runs") or s["runs"])
        src = f"calibrated on {n_cal} run(s), {s['sweep_grid']['points']}-point loglog grid"
    print(f"threshold: loglog {s['threshold_loglog']:.4f} = perplexity {s['threshold_ppl']:.5g}  ({src})")
    print(f"PreMemAcc vs test accuracy: R^2 = {_fmt(s['r2'])}  Pearson r = {_fmt(s['pearson_r'])}"
          f"  ({s['n_points']} points, {s['n_runs']} runs)")
    print(f"train accuracy vs test accuracy: R^2 = {_fmt(s['train_acc_r2'])}"
          f"  Pearson r = {_fmt(s['train_acc_pearson_r'])}")
    if "r2_heldout" in s:
        print(f"calibration runs: R^2 = {_fmt(s['r2_calibration'])}   held-out runs: R^2 = {_fmt(s['r2_heldout'])}"
              f"  Pearson r = {_fmt(s['pearson_r_heldout'])}")
    print(f"wrote {out}/summary.json, sweep.csv, premem_examples.parquet/.csv"
          + (", figures/" if any(f.startswith("figures") for f in s["files"]) else ""))


# ----------------------------------------------------------------------------- figures


def _save_fig(fig, folder: Path, stem: str) -> list[str]:
    """Save PNG and PDF atomically (temp file in the same folder, then os.replace)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for ext in ("png", "pdf"):
        final = folder / f"{stem}.{ext}"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                fig.savefig(f, format=ext, dpi=150, bbox_inches="tight")
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give figures normal permissions
            os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        names.append(final.name)
    return names


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def _diag(ax, lo=0.0, hi=1.0):
    ax.plot([lo, hi], [lo, hi], ls="--", c="0.5", lw=1, zorder=0, label="y = x")


def _lims(*arrays):
    v = np.concatenate([np.asarray(a, float).ravel() for a in arrays])
    v = v[np.isfinite(v)]
    lo, hi = (0.0, 1.0) if v.size == 0 else (float(v.min()), float(v.max()))
    pad = 0.05 * max(hi - lo, 0.05)
    return max(0.0, lo - pad), min(1.0, hi + pad)


def make_figures(runs, points: pd.DataFrame, sweep: pd.DataFrame, summary: dict, folder: Path, fig3_run=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    with plt.rc_context({"font.size": 9}):
        files += _fig1(plt, points, summary, folder)
        files += _fig3(plt, runs, summary, folder, fig3_run)
        files += _fig4(plt, points, summary, folder)
        files += _fig_r2(plt, sweep, summary, folder)
    return files


def _fig1(plt, points, summary, folder):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    lo, hi = _lims(points["train_acc"], points["premem_acc"], points["test_acc"])
    cmap = plt.get_cmap("tab20" if points["run"].nunique() > 10 else "tab10")
    for ax, col, label, r2 in (
        (axes[0], "train_acc", "train accuracy", summary["train_acc_r2"]),
        (axes[1], "premem_acc", "pre-memorization train accuracy", summary["r2"]),
    ):
        _diag(ax, lo, hi)
        for k, (run, g) in enumerate(points.groupby("run", sort=False)):
            g = g.sort_values("step")
            ax.plot(g[col], g["test_acc"], "-o", ms=4, color=cmap(k % cmap.N), label=run)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(label)
        ax.set_title(f"{label} vs test accuracy (R$^2$ = {_fmt(r2, '.3f')})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False)
    fig.suptitle("Figure 1: one line per run over its checkpoints", y=1.0)
    files = _save_fig(fig, folder, "fig1")
    plt.close(fig)
    return files


def _fig3_choice(runs, fig3_run):
    if fig3_run is not None:
        for r in runs:
            if r.name == fig3_run or r.path.name == fig3_run:
                return r
        raise PremError(f"--fig3-run {fig3_run!r} is not among the analyzed runs: " + ", ".join(r.name for r in runs))
    return max(runs, key=lambda r: len(r.steps))  # first run with the most checkpoints


def fig3_order(acc, ll, t, max_examples=FIG3_MAX_EXAMPLES, seed=0) -> np.ndarray:
    """Rows shown in Figure 3: a fixed random subsample (seed 0) of at most max_examples examples,
    ordered by the checkpoint at which each is first memorized (earliest on top; never memorized at
    the bottom), ties broken by PreMemAcc at the last checkpoint, highest first."""
    c, n = acc.shape
    idx = np.arange(n)
    if n > max_examples:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))
    mem = ll[:, idx] < t
    first = np.where(mem.any(axis=0), np.argmax(mem, axis=0), c)
    pm = _premem_ll(acc[:, idx], ll[:, idx], t)[-1]
    return idx[np.lexsort((-pm, first))]


def _fig3_rgb(acc, ll, t, hi):
    """HSV colours: value (brightness) = 0.1 + 0.9 * accuracy; hue from loglog perplexity, split at the
    threshold t: memorized (loglog < t) runs red -> orange over [t - 2, t], not memorized runs
    green -> blue over [t, hi]; so warm = memorized, cool = not memorized."""
    from matplotlib.colors import hsv_to_rgb

    ll = np.nan_to_num(np.asarray(ll, dtype=np.float64), nan=-np.inf)
    lo = t - 2.0
    below = 0.12 * np.clip((ll - lo) / (t - lo), 0, 1)
    above = 0.3 + 0.4 * np.clip((ll - t) / max(hi - t, 1e-9), 0, 1)
    hue = np.where(ll < t, below, above)
    val = 0.1 + 0.9 * np.clip(acc, 0, 1)
    return hsv_to_rgb(np.stack([hue, np.ones_like(hue), val], axis=-1))


def _fig3(plt, runs, summary, folder, fig3_run):
    run = _fig3_choice(runs, fig3_run)
    t = summary["threshold_loglog"]
    ll = run.ll
    order = fig3_order(run.acc, ll, t)
    fin = ll[np.isfinite(ll)]
    hi = max(float(np.quantile(fin, 0.99)) if fin.size else t + 1.0, t + 1.0)
    rgb = _fig3_rgb(run.acc[:, order].T, ll[:, order].T, t, hi)

    fig = plt.figure(figsize=(7.5, 7.5))
    ax = fig.add_axes([0.1, 0.08, 0.55, 0.84])
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(run.steps)))
    ax.set_xticklabels([f"{s}\n({e:.3g} ep)" for s, e in zip(run.steps, run.epochs)], fontsize=7)
    ax.set_xlabel("checkpoint step (epoch)")
    ax.set_ylabel(f"train examples ({len(order)} of {run.acc.shape[1]}), by first memorized checkpoint, "
                  "then PreMemAcc", fontsize=8)
    ax.set_title(f"Figure 3: learning progression, {run.name}", fontsize=9)
    ax.set_yticks([])

    key = fig.add_axes([0.74, 0.6, 0.22, 0.25])
    lx = np.linspace(t - 2.0, hi, 128)
    ay = np.linspace(0, 1, 32)
    LX, AY = np.meshgrid(lx, ay)
    key.imshow(_fig3_rgb(AY, LX, t, hi), origin="lower", aspect="auto", extent=[t - 2.0, hi, 0, 1])
    key.axvline(t, color="w", lw=1.2, ls="--")
    key.set_xlabel(f"log(log(perplexity)) (hue)\nwarm: memorized (< {t:.2f}, ppl < {summary['threshold_ppl']:.4g})",
                   fontsize=7)
    key.set_ylabel("accuracy (brightness)", fontsize=7)
    key.tick_params(labelsize=7)
    files = _save_fig(fig, folder, "fig3")
    plt.close(fig)
    return files


_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]


def _fig4(plt, points, summary, folder):
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(5.8, 4.8))
    lo, hi = _lims(points["premem_acc"], points["test_acc"])
    _diag(ax, lo, hi)
    lrs = pd.to_numeric(points["lr"], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(lrs) & (lrs > 0)
    if ok.any():
        vmin, vmax = lrs[ok].min(), lrs[ok].max()
        if vmin == vmax:
            vmin, vmax = vmin / 2, vmax * 2
        norm = LogNorm(vmin=vmin, vmax=vmax)
    else:
        norm = LogNorm(vmin=1e-6, vmax=1e-3)
    cmap = plt.get_cmap("viridis")
    epochs = points["num_epochs"].astype(object).where(points["num_epochs"].notna(), "?")
    levels = sorted(set(epochs), key=lambda v: (isinstance(v, str), v))
    heldout = ~points["calibration"].to_numpy(dtype=bool)
    for k, e in enumerate(levels):
        sel = (epochs == e).to_numpy()
        for h in (False, True):
            s = sel & (heldout == h) & ok
            if s.any():
                ax.scatter(points["premem_acc"][s], points["test_acc"][s], c=lrs[s], cmap=cmap, norm=norm,
                           marker=_MARKERS[k % len(_MARKERS)], s=46,
                           edgecolors="k" if h else "none", linewidths=1.4 if h else 0)
            s = sel & (heldout == h) & ~ok
            if s.any():
                ax.scatter(points["premem_acc"][s], points["test_acc"][s], c="0.6",
                           marker=_MARKERS[k % len(_MARKERS)], s=46, edgecolors="k" if h else "none")
    sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=ax, label="learning rate")
    handles = [Line2D([], [], ls="", marker=_MARKERS[k % len(_MARKERS)], color="0.4", label=f"{e} epoch{'' if e == 1 else 's'}")
               for k, e in enumerate(levels)]
    if heldout.any():
        handles.append(Line2D([], [], ls="", marker="o", mfc="w", mec="k", mew=1.4, label="held-out run"))
    handles.append(Line2D([], [], ls="--", c="0.5", label="y = x"))
    ax.legend(handles=handles, loc="upper left", fontsize=7)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("pre-memorization train accuracy")
    ax.set_ylabel("test accuracy")
    title = f"R$^2$ = {_fmt(summary['r2'], '.3f')}"
    if summary.get("r2_heldout") is not None:
        title += f" (held-out {summary['r2_heldout']:.3f})"
    ax.set_title(f"{title}; loglog threshold {summary['threshold_loglog']:.2f} (ppl {summary['threshold_ppl']:.4g})")
    ax.grid(alpha=0.3)
    files = _save_fig(fig, folder, "fig4")
    plt.close(fig)
    return files


def _fig_r2(plt, sweep, summary, folder):
    fig, ax = plt.subplots(figsize=(5.8, 4))
    x = sweep["threshold_loglog"].to_numpy()
    r2 = sweep["r2"].to_numpy()
    ax.plot(x, r2, "-", c="C0", label="PreMemAcc R$^2$" + (" (calibration runs)" if "r2_heldout" in sweep else ""))
    if "r2_heldout" in sweep and np.isfinite(sweep["r2_heldout"]).any():
        ax.plot(x, sweep["r2_heldout"], "-", c="C2", label="PreMemAcc R$^2$ (held-out runs)")
    tr = summary["train_acc_r2"]
    if tr is not None:
        ax.axhline(tr, c="C3", ls=":", label=f"train accuracy R$^2$ ({tr:.3f})")
    ax.axvline(summary["threshold_loglog"], c="k", ls="--", lw=1,
               label=f"chosen {summary['threshold_loglog']:.2f} (ppl {summary['threshold_ppl']:.4g})")
    vals = np.concatenate([r2[np.isfinite(r2)], [tr] if tr is not None else []])
    if vals.size:
        ax.set_ylim(max(-1.0, float(vals.min())) - 0.05, 1.02)
    ax.set_xlabel("memorization threshold log(log(perplexity))")
    ax.set_ylabel("R$^2$ (test acc vs y = x)")
    ax.set_title("R$^2$ against the memorization threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    files = _save_fig(fig, folder, "r2_vs_threshold")
    plt.close(fig)
    return files


# ----------------------------------------------------------------------------- import-published

_RUN_RE = re.compile(r"^(?P<task>[a-z0-9]+)_(?P<tag>.+?)_(?P<epochs>\d+)epochs_(?P<rest>.*?)_?lr(?P<lr>[0-9.eE+-]+)_bs(?P<bs>\d+)$")
_TYPES_RE = re.compile(r"^(?P<split>train|test)_answer_types(?P<n>\d+)_seed(?P<seed>\d+)(?:_temp(?P<temp>[0-9.]+))?\.npy$")
_SUBSETS = ("full", "half", "quarter")


def parse_published_name(name: str) -> dict:
    """gsm8k_orig_3epochs_full_lr2e-05_bs128 -> task, num_epochs, subset (None when absent), lr, bs."""
    m = _RUN_RE.match(name)
    if not m:
        raise PremError(f"{name}: run folder name does not look like <task>_<tag>_<E>epochs_<subset>_lr<LR>_bs<B>")
    subset = next((s for s in _SUBSETS if s in m.group("rest").split("_")), None)
    return dict(
        task=m.group("task"),
        tag=m.group("tag"),
        num_epochs=int(m.group("epochs")),
        subset=subset,
        learning_rate=float(m.group("lr")),
        batch_size=int(m.group("bs")),
    )


def _answer_file(ckpt: Path, split: str) -> tuple[Path, dict]:
    cands = []
    for p in ckpt.iterdir():
        m = _TYPES_RE.match(p.name)
        if m and m.group("split") == split:
            cands.append((int(m.group("n")), m.group("temp") is not None, p, m.groupdict()))
    if not cands:
        raise PremError(f"{ckpt}: no {split}_answer_types<N>_seed<S>[_temp<T>].npy file")
    cands.sort(key=lambda c: (c[0], c[1]))  # most samples, then the explicit _temp file
    if len(cands) > 1:
        _warn(f"{ckpt}: several {split} answer files; using {cands[-1][2].name}")
    return cands[-1][2], cands[-1][3]


def _load_npy(p: Path, kind: str | None = None) -> np.ndarray:
    try:
        a = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise PremError(f"{p}: cannot read .npy file ({type(e).__name__}: {e})") from e
    if kind == "types":
        if a.ndim != 2 or a.dtype.kind not in "iu":
            raise PremError(f"{p}: expected a 2-D integer array of answer types, got {a.dtype} {a.shape}")
        if a.size and (a.min() < 0 or a.max() > 2):
            raise PremError(f"{p}: answer types must be 0 (correct), 1 (incorrect) or 2 (unparseable)")
    return a


_OUTCOME_ARR = pa.array(list(records.OUTCOMES), type=pa.string())
_RECORD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("split", pa.string()),
        ("variant", pa.string()),
        ("samples", pa.list_(pa.string())),
        ("answers", pa.list_(pa.string())),
        ("outcomes", pa.list_(pa.string())),
        ("accuracy", pa.float64()),
        ("perplexity", pa.float64()),
        ("target_tokens", pa.int64()),
    ]
)
assert _RECORD_SCHEMA.names == list(records.RECORD_COLUMNS)


def record_table(ids, step: int, epoch: float, split: str, types, perplexity=None, target_tokens=None,
                 variant: str = "original", samples=None) -> pa.Table:
    """Build a record table (records.RECORD_COLUMNS) from an answer-type matrix, vectorized.

    types[ex, sample]: 0 correct, 1 incorrect, 2 unparseable. samples/answers are empty lists unless
    `samples` (a list of lists of str, or an Arrow list<string> array) is given; answers stay empty. perplexity defaults to NaN and
    target_tokens to -1.
    """
    types = np.asarray(types)
    n, s = types.shape
    offsets = pa.array(np.arange(0, n * s + 1, s, dtype=np.int32))
    outcomes = pa.ListArray.from_arrays(offsets, pc.take(_OUTCOME_ARR, pa.array(types.ravel().astype(np.int8))))
    empty = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()))
    if samples is None:
        samp = empty
    elif isinstance(samples, pa.Array):
        samp = samples
    else:
        samp = pa.array(samples, type=pa.list_(pa.string()))
    if len(samp) != n:
        raise ValueError(f"samples has {len(samp)} rows, types {n}")
    ppl = np.full(n, np.nan) if perplexity is None else np.asarray(perplexity, dtype=np.float64)
    tok = np.full(n, -1, dtype=np.int64) if target_tokens is None else np.asarray(target_tokens, dtype=np.int64)
    cols = [
        pa.array(list(ids), type=pa.string()),
        pa.array(np.full(n, step, dtype=np.int64)),
        pa.array(np.full(n, epoch, dtype=np.float64)),
        pa.array(np.full(n, split, dtype=object), type=pa.string()),
        pa.array(np.full(n, variant, dtype=object), type=pa.string()),
        samp,
        empty,
        outcomes,
        pa.array((types == 0).mean(axis=1) if s else np.full(n, np.nan)),
        pa.array(ppl),
        pa.array(tok),
    ]
    return pa.Table.from_arrays(cols, schema=_RECORD_SCHEMA)


def write_record_table(path, table: pa.Table) -> None:
    """Write a record table atomically (records.atomic_write_bytes)."""
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    records.atomic_write_bytes(path, buf.getvalue().to_pybytes())


def _published_runs(src: Path) -> list[Path]:
    if not src.is_dir():
        raise PremError(f"{src}: not a folder")

    def is_run(p: Path):
        return p.is_dir() and any(c.is_dir() and re.fullmatch(r"checkpoint-\d+", c.name) for c in p.iterdir())

    if is_run(src):
        return [src]
    runs = sorted(p for p in src.iterdir() if is_run(p))
    if not runs:
        raise PremError(f"{src}: no published run folders (<run>/checkpoint-<step>/...) inside")
    return runs


def import_published(src, out, *, model: str | None = None, force: bool = False, progress: bool = True) -> list[Path]:
    """Convert the authors' published ckpts/ folder into run folders under `out` (see module doc).

    One run folder per published run: config.yaml, subset_ids.json and
    records/step-XXXXXX.{train,test}.original.parquet per checkpoint. Train records hold only the
    examples of subsample_idxs.npy, in dataset order. Existing files are kept unless force.
    Returns the run folders.
    """
    src, out = Path(src), Path(out)
    run_srcs = _published_runs(src)
    written = skipped = 0
    dirs = []
    ckpt_lists = [
        sorted(
            (c for c in rs.iterdir() if c.is_dir() and re.fullmatch(r"checkpoint-\d+", c.name)),
            key=lambda c: int(c.name.split("-")[1]),
        )
        for rs in run_srcs
    ]
    bar = tqdm(total=sum(map(len, ckpt_lists)), desc="import-published", unit="ckpt", disable=not progress,
               file=sys.stderr)
    for rs, ckpts in zip(run_srcs, ckpt_lists):
        meta = parse_published_name(rs.name)
        task = meta["task"]
        sub_path = rs / "subsample_idxs.npy"
        ftrain, _ = _answer_file(ckpts[0], "train")
        n_train = _load_npy(ftrain, "types").shape[0]
        if sub_path.exists():
            sub = _load_npy(sub_path)
            if sub.ndim != 1 or sub.dtype.kind not in "iu" or (sub.size and (sub.min() < 0 or sub.max() >= n_train)):
                raise PremError(f"{sub_path}: expected 1-D indices into the {n_train} train rows")
        else:
            _warn(f"{sub_path}: missing; assuming the run trained on all {n_train} train examples")
            sub = np.arange(n_train)
        rows = np.unique(sub)
        subset = meta["subset"]
        if subset is None:
            frac = rows.size / max(n_train, 1)
            subset = min(zip((abs(frac - f) for f in (1, 0.5, 0.25)), _SUBSETS))[1]
        run_dir = out / rs.name
        dirs.append(run_dir)
        cfg = dict(
            task=task,
            model=model or DEFAULT_MODEL,
            learning_rate=meta["learning_rate"],
            num_epochs=meta["num_epochs"],
            subset=subset,
            batch_size=meta["batch_size"],
            run_name=rs.name,
            source=str(rs.resolve()),
            published=True,
            checkpoints=[int(c.name.split("-")[1]) for c in ckpts],
            n_train_examples=int(rows.size),
        )
        for path, text in (
            (run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False)),
            (run_dir / "subset_ids.json", json.dumps([f"{task}/train/{i}" for i in sub.tolist()]) + "\n"),
        ):
            if force or not path.exists():
                records.atomic_write_text(path, text)
                written += 1
            else:
                skipped += 1
        train_ids = np.char.add(f"{task}/train/", rows.astype(str)).tolist()
        for k, ck in enumerate(ckpts):
            step = int(ck.name.split("-")[1])
            epoch = (k + 1) * meta["num_epochs"] / len(ckpts)
            for split in ("train", "test"):
                dest = records.record_path(run_dir, step, split, "original")
                if dest.exists() and not force:
                    skipped += 1
                    continue
                f, _ = _answer_file(ck, split)
                types = _load_npy(f, "types")
                if split == "train":
                    if types.shape[0] != n_train:
                        raise PremError(f"{f}: {types.shape[0]} rows, expected {n_train} (one per train example)")
                    pp = ck / "train_perplexities.npy"
                    if not pp.exists():
                        raise PremError(f"{pp}: missing (train perplexities are needed for the metric)")
                    ppl = _load_npy(pp).astype(np.float64).ravel()
                    if ppl.shape[0] != n_train:
                        raise PremError(f"{pp}: {ppl.shape[0]} values, expected {n_train}")
                    tp = ck / "train_num_tokens.npy"
                    tok = _load_npy(tp).astype(np.int64).ravel() if tp.exists() else np.full(n_train, -1)
                    if tok.shape[0] != n_train:
                        raise PremError(f"{tp}: {tok.shape[0]} values, expected {n_train}")
                    tab = record_table(train_ids, step, epoch, "train", types[rows], ppl[rows], tok[rows])
                else:
                    ids = np.char.add(f"{task}/test/", np.arange(types.shape[0]).astype(str)).tolist()
                    tab = record_table(ids, step, epoch, "test", types)
                write_record_table(dest, tab)
                written += 1
            bar.update(1)
    bar.close()
    print(f"import-published: {len(dirs)} run(s) under {out}; wrote {written} file(s), "
          f"kept {skipped} existing (use --force to rewrite)")
    return dirs


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="premem.py",
        description="Pre-memorization train accuracy (Kang et al., ICML 2025): predict test accuracy "
        "from train-set learning dynamics.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=THRESHOLD_HELP,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    an = sub.add_parser(
        "analyze",
        help="PreMemAcc per run/checkpoint, threshold calibration, tables and figures",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Memorized at checkpoint m: target perplexity < p. PreMemAcc_m = "
        "min(max_{m'<=m} acc_m' * 1[not memorized_m'], acc_m); its mean over a run's train examples "
        "predicts test accuracy. Threshold p as a perplexity (--threshold-ppl) or as "
        "log(log(perplexity)) like the authors (--threshold; p = exp(exp(X))); perplexity <= 1 is "
        "always memorized. Default: calibrate on all runs (maximize R^2 of test acc vs y = x over a "
        "loglog grid). Step 0 (base model) records count as a checkpoint unless --no-step0.",
    )
    an.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (globs fine)")
    an.add_argument("--out", required=True, type=Path, help="output folder")
    g = an.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, metavar="LOGLOG",
                   help="memorization threshold on log(log(perplexity)) (e.g. -2.5 = perplexity 1.0855)")
    g.add_argument("--threshold-ppl", type=float, metavar="P", help="memorization threshold on perplexity (> 1)")
    g.add_argument("--calibrate-on", nargs="+", metavar="RUN",
                   help="calibrate on these runs (names, paths or globs); report held-out R^2 on the others")
    an.add_argument("--fragile-t", type=float, default=DEFAULT_FRAGILE_T,
                    help="fragile = PreMemAcc at the last checkpoint < this (default %(default)s)")
    an.add_argument("--sweep-min", type=float, default=DEFAULT_SWEEP[0], help="loglog grid min (default %(default)s)")
    an.add_argument("--sweep-max", type=float, default=DEFAULT_SWEEP[1], help="loglog grid max (default %(default)s)")
    an.add_argument("--sweep-points", type=int, default=DEFAULT_SWEEP[2], help="grid points (default %(default)s)")
    an.add_argument("--variant", default="original", help="prompt variant of the records (default %(default)s)")
    an.add_argument("--no-step0", action="store_true", help="ignore step-0 (base model) records entirely")
    an.add_argument("--fig3-run", help="run shown in fig3 (default: the first run with the most checkpoints)")
    an.add_argument("--no-figures", action="store_true", help="skip the figures")
    ip = sub.add_parser(
        "import-published",
        help="convert the authors' published ckpts/ folder into run folders with records",
        description="SRC: a ckpts/ folder of published runs (or one run folder). OUT gets one run folder "
        "per published run: config.yaml, subset_ids.json, records/step-XXXXXX.{train,test}.original.parquet. "
        "Existing files are kept (rerun is cheap) unless --force.",
    )
    ip.add_argument("src", type=Path, metavar="SRC")
    ip.add_argument("out", type=Path, metavar="OUT")
    ip.add_argument("--model", default=None, help=f"model name for config.yaml (default {DEFAULT_MODEL})")
    ip.add_argument("--force", action="store_true", help="rewrite existing files")
    import priors  # noqa: E402 - robustness (Figures 6-7) and prior metrics (Figure 5) live in their own modules
    import robustness  # noqa: E402

    robustness.add_parser(sub)
    priors.add_parser(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "analyze":
            analyze(
                args.run_dirs,
                args.out,
                threshold_loglog=args.threshold,
                threshold_ppl=args.threshold_ppl,
                calibrate_on=args.calibrate_on,
                grid=default_grid(args.sweep_min, args.sweep_max, args.sweep_points),
                fragile_t=args.fragile_t,
                variant=args.variant,
                include_step0=not args.no_step0,
                figures=not args.no_figures,
                fig3_run=args.fig3_run,
            )
        elif args.cmd == "import-published":
            import_published(args.src, args.out, model=args.model, force=args.force)
        else:
            args.func(args)  # robustness, priors
    except (PremError, FileNotFoundError, ValueError) as e:
        print(f"premem.py {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.modules.setdefault("premem", sys.modules[__name__])  # robustness.py/priors.py share this module's classes
    sys.exit(main())
