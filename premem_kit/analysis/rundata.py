"""Loading runs for analysis: a run folder's train and test records as arrays.

`load_run` reads only the columns the metric needs (id, step, epoch, accuracy, perplexity) and aligns
the train examples across checkpoints; `load_runs` expands globs and skips folders without records.
Step 0 (the base model) is not a checkpoint of the paper's metric: it is left out unless asked for
(include_step0=True, `premem.py analyze --include-step0`).
"""
from __future__ import annotations

import glob
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from premem_kit.core import records
from premem_kit.core import runs
from premem_kit.core.errors import KitError, warn
from premem_kit.metric import loglog


class AnalysisError(KitError, ValueError):
    """Bad analysis input (the message names the file or folder)."""


class NoRecordsError(AnalysisError):
    """A folder has no train record files."""



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
    test_ids: np.ndarray = field(default=None)  # [M] test example ids (None: they differ across checkpoints)
    test_matrix: np.ndarray = field(default=None)  # [C, M] per-question test accuracy, NaN rows without a record

    @property
    def ll(self) -> np.ndarray:
        return loglog(self.ppl)

    def setting(self, key: str, default=None):
        """A value of the run's config.yaml (default when absent or null)."""
        v = self.config.get(key, default)
        return default if v is None else v

    @property
    def learning_rate(self) -> float | None:
        return as_float(self.setting("learning_rate"))


def as_float(v) -> float | None:
    """v as a float, or None when it is not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def load_run(run_dir, variant: str = "original", include_step0: bool = False, name: str | None = None) -> RunData:
    """Read a run folder's train and test records (only the columns the metric needs).

    Checkpoints are the steps with a train record of `variant`, sorted by step. Step 0 (the base
    model) is not one of them unless include_step0: the paper's running max is over trained
    checkpoints only. Train examples are aligned by id; ids missing from some checkpoint are dropped
    (with a warning). Raises NoRecordsError / AnalysisError naming the file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NoRecordsError(f"{run_dir}: not a folder")
    recs = [r for r in runs.list_records(run_dir) if r[2] == variant and (include_step0 or r[0] != 0)]
    train = {s: p for s, sp, _, p in recs if sp == "train"}
    test = {s: p for s, sp, _, p in recs if sp == "test"}
    if not train:
        raise NoRecordsError(
            f"{run_dir}: no train records of trained checkpoints (expected "
            f"{run_dir}/records/step-XXXXXX.train.{variant}.parquet); run `python evaluate.py {run_dir}` first")
    steps = sorted(train)
    per_ckpt = [read_train_record(train[s], s) for s in steps]
    ids, A, P = align_examples(run_dir, [c[0] for c in per_ckpt], [c[1] for c in per_ckpt],
                               [c[2] for c in per_ckpt])
    test_acc, n_test, test_ids, test_matrix = read_test_accuracy(test, steps)
    return RunData(name=name or run_dir.name, path=run_dir, config=read_run_settings(run_dir),
                   steps=np.asarray(steps, dtype=np.int64), epochs=np.asarray([c[3] for c in per_ckpt]),
                   ids=ids, acc=A, ppl=P, test_acc=test_acc, n_test=n_test, test_ids=test_ids,
                   test_matrix=test_matrix)


def read_run_settings(run_dir: Path) -> dict:
    """config.yaml as written (an imported or older run may lack keys); {} with a warning if absent."""
    if runs.config_path(run_dir).exists():
        return runs.read_config_as_written(run_dir)
    warn(f"{runs.config_path(run_dir)}: missing; learning rate / epochs unknown for this run")
    return {}


def read_train_record(p: Path, step: int):
    """(ids, accuracy, perplexity, epoch) of one train record file, checked."""
    t = records.read_columns(p, _NEEDED)
    if t.num_rows == 0:
        raise AnalysisError(f"{p}: record file has no rows")
    ids = np.asarray(t.column("id").to_pylist(), dtype=object)
    fsteps = t.column("step").to_numpy()
    if (fsteps != step).any():
        raise AnalysisError(f"{p}: column step holds {sorted(set(fsteps.tolist()))[:3]}, file name says {step}")
    acc, ppl = numbers(t, "accuracy", p), numbers(t, "perplexity", p)
    if np.isnan(acc).any():
        raise AnalysisError(f"{p}: {int(np.isnan(acc).sum())} rows have NaN accuracy")
    if ((acc < 0) | (acc > 1)).any():
        raise AnalysisError(f"{p}: accuracy outside [0, 1]")
    if np.isnan(ppl).any():
        warn(f"{p}: {int(np.isnan(ppl).sum())} train rows have NaN perplexity; counted as memorized")
    if len(set(ids.tolist())) != len(ids):
        raise AnalysisError(f"{p}: duplicate ids")
    if "target_cut" in t.column_names and pc_any(t.column("target_cut")):
        n = sum(bool(x) for x in t.column("target_cut").to_pylist())
        warn(f"{p}: {n} train targets were cut at max_length; their perplexity covers only part of the target")
    return ids, acc, ppl, float(t.column("epoch")[0].as_py())


def numbers(table, name: str, p: Path) -> np.ndarray:
    """A numeric column as float64; a column of another type (text, lists) is an AnalysisError naming it."""
    import pyarrow as pa

    col = table.column(name)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_null(col.type)):
        raise AnalysisError(f"{p}: column {name} holds {col.type}, expected numbers (a record file written by "
                            f"evaluate.py or premem.py import-published)")
    return col.to_numpy(zero_copy_only=False).astype(np.float64)


def pc_any(column) -> bool:
    return any(bool(x) for x in column.to_pylist())


def align_examples(run_dir, idlists, accs, ppls):
    """(ids, acc[ckpt, ex], ppl[ckpt, ex]) on the ids every checkpoint has, in the first one's order."""
    ids0 = idlists[0]
    if all(len(x) == len(ids0) and (x == ids0).all() for x in idlists):
        return ids0, np.stack(accs), np.stack(ppls)
    common_set = set(ids0.tolist())
    for x in idlists[1:]:
        common_set &= set(x.tolist())
    common = np.asarray([i for i in ids0.tolist() if i in common_set], dtype=object)
    if len(common) == 0:
        raise AnalysisError(f"{run_dir}: train records of different checkpoints share no example ids")
    warn(f"{run_dir}: train records cover different examples across checkpoints; using the "
         f"{len(common)} ids present at every checkpoint (of {max(len(x) for x in idlists)})")
    idx = pd.Index(common)
    A = np.empty((len(idlists), len(common)))
    P = np.empty_like(A)
    for k, (ids, acc, ppl) in enumerate(zip(idlists, accs, ppls)):
        pos = pd.Index(ids).get_indexer(idx)
        A[k], P[k] = acc[pos], ppl[pos]
    return common, A, P


def read_test_accuracy(test: dict, steps: list[int]):
    """(mean test accuracy [ckpt] (NaN without a test record), test examples [ckpt], test ids [M],
    per-question accuracy [ckpt, M]); the last two are None when checkpoints scored different questions."""
    test_acc = np.full(len(steps), np.nan)
    n_test = np.zeros(len(steps), dtype=np.int64)
    per_q: dict[int, tuple[list, np.ndarray]] = {}
    for s, p in test.items():
        if s not in steps:
            warn(f"{p}: test record without a train record at step {s}; ignored")
            continue
        t = records.read_columns(p, ["id", "accuracy"])
        a = numbers(t, "accuracy", p)
        if a.size == 0:
            raise AnalysisError(f"{p}: record file has no rows")
        if np.isnan(a).any():
            raise AnalysisError(f"{p}: {int(np.isnan(a).sum())} rows have NaN accuracy")
        k = steps.index(s)
        test_acc[k], n_test[k] = a.mean(), a.size
        per_q[k] = ([str(x) for x in t.column("id").to_pylist()], a)
    if not per_q:
        return test_acc, n_test, None, None
    ids = sorted(next(iter(per_q.values()))[0])
    if any(sorted(q) != ids for q, _ in per_q.values()):
        return test_acc, n_test, None, None
    matrix = np.full((len(steps), len(ids)), np.nan)
    for k, (q, a) in per_q.items():
        matrix[k] = pd.Series(a, index=q).reindex(ids).to_numpy()
    return test_acc, n_test, np.asarray(ids, dtype=object), matrix


def expand_run_dirs(patterns) -> list[Path]:
    """Expand glob patterns (quoted or not) into folders, keeping the order and dropping repeats."""
    out, seen = [], set()
    for pat in patterns:
        hits = sorted(glob.glob(str(pat))) if glob.has_magic(str(pat)) else [str(pat)]
        if not hits:
            warn(f"{pat}: matches nothing")
        for h in hits:
            p = Path(h)
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                out.append(p)
    return out


def load_runs(run_dirs, variant="original", include_step0=False, progress=True) -> list[RunData]:
    """Load every run folder; folders without records are skipped with a warning."""
    dirs = expand_run_dirs(run_dirs)
    names = [p.name for p in dirs]
    loaded, skipped = [], []
    for p in tqdm(dirs, desc="loading runs", unit="run", disable=not progress, file=sys.stderr):
        name = p.name if names.count(p.name) == 1 else f"{p.parent.name}/{p.name}"
        try:
            loaded.append(load_run(p, variant=variant, include_step0=include_step0, name=name))
        except NoRecordsError as e:
            warn(f"skipping {e}")
            skipped.append(str(p))
    if not loaded:
        raise NoRecordsError(
            "no run folder with records among: " + ", ".join(str(p) for p in dirs)
            + f" (each needs records/step-XXXXXX.train.{variant}.parquet)"
        )
    return loaded
