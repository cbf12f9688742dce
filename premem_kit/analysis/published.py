"""`premem.py import-published`: the authors' published results (Kang et al.) as run folders.

The published ckpts/ folder holds one folder per run, named <task>_<tag>_<E>epochs_<subset>_lr<LR>_bs<B>
(e.g. gsm8k_orig_3epochs_full_lr2e-05_bs128), with subsample_idxs.npy (the train rows the run trained
on) and checkpoint-<step>/ folders of .npy files:

    {train,test}_answer_types<N>_seed<S>[_temp<T>].npy   [example, sample]: 0 correct, 1 incorrect,
                                                         2 unparseable (which file: see below)
    train_perplexities.npy, train_num_tokens.npy         per train row

A checkpoint may hold several answer files per split (5, 10 or 50 samples). By default the 5-sample file
is read (N = 5, the one with _temp first), as the authors' analysis does (gsm8k_analyze2.ipynb reads the
first that exists of types5_seed2_temp0.8, types50_seed2_temp0.8, types5_seed2, types50_seed2,
types10_seed2_temp0.8: in every published checkpoint that is the 5-sample file when there is one); when
a checkpoint has no 5-sample file the one with the most samples is read and a warning names the run
and split. samples=N (--samples N) prefers N samples instead; samples=None (--most-samples, the kit's
earlier choice) always takes the file with the most samples.

Each becomes a run folder of the kit's layout (runs.py): config.yaml, subset_ids.json and a train and a
test record file per checkpoint (records.record_table: outcomes and accuracy, no sample texts). Train
records hold only the rows of subsample_idxs.npy, in dataset order.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from premem_kit.core import records
from premem_kit.core import runs
from premem_kit.analysis.defaults import DEFAULT_MODEL
from premem_kit.core.errors import KitError, warn
from premem_kit.core.files import atomic_write_text

_RUN_RE = re.compile(r"^(?P<task>[a-z0-9]+)_(?P<tag>.+?)_(?P<epochs>\d+)epochs_(?P<rest>.*?)_?lr(?P<lr>[0-9.eE+-]+)_bs(?P<bs>\d+)$")
_TYPES_RE = re.compile(r"^(?P<split>train|test)_answer_types(?P<n>\d+)_seed(?P<seed>\d+)(?:_temp(?P<temp>[0-9.]+))?\.npy$")
SUBSETS = ("full", "half", "quarter")
PREFERRED_SAMPLES = 5  # the answer files the authors' analysis reads


class PublishedError(KitError, ValueError):
    """A published folder or .npy file that is not as expected; the message names it."""


def parse_published_name(name: str) -> dict:
    """gsm8k_orig_3epochs_full_lr2e-05_bs128 -> task, tag, num_epochs, subset (None when absent), lr, bs."""
    m = _RUN_RE.match(name)
    if not m:
        raise PublishedError(f"{name}: run folder name does not look like <task>_<tag>_<E>epochs_<subset>_lr<LR>_bs<B>")
    subset = next((s for s in SUBSETS if s in m.group("rest").split("_")), None)
    return dict(
        task=m.group("task"),
        tag=m.group("tag"),
        num_epochs=int(m.group("epochs")),
        subset=subset,
        learning_rate=float(m.group("lr")),
        batch_size=int(m.group("bs")),
    )


def answer_file(ckpt: Path, split: str, samples: int | None = PREFERRED_SAMPLES) -> tuple[Path, dict]:
    """The answer-type file of a split in a published checkpoint folder; returns (path, the parts of its
    name, with "fallback": True when no file has `samples` samples).

    samples=N: the file with N samples, the one with an explicit _temp first; when there is none, the
    file with the most samples (then _temp first). samples=None: always the most samples."""
    cands = []
    for p in ckpt.iterdir():
        m = _TYPES_RE.match(p.name)
        if m and m.group("split") == split:
            cands.append((int(m.group("n")), m.group("temp") is not None, p, m.groupdict()))
    if not cands:
        raise PublishedError(f"{ckpt}: no {split}_answer_types<N>_seed<S>[_temp<T>].npy file")
    wanted = [c for c in cands if c[0] == samples]
    best = max(wanted or cands, key=lambda c: (c[0], c[1]))
    return best[2], {**best[3], "fallback": samples is not None and not wanted}


def read_npy(p: Path, kind: str | None = None) -> np.ndarray:
    """A .npy file; kind="types" checks it is a 2-D integer matrix of answer types 0, 1, 2."""
    try:
        a = np.load(p, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise PublishedError(f"{p}: cannot read .npy file ({type(e).__name__}: {e})") from e
    if kind == "types":
        if a.ndim != 2 or a.dtype.kind not in "iu":
            raise PublishedError(f"{p}: expected a 2-D integer array of answer types, got {a.dtype} {a.shape}")
        if a.size and (a.min() < 0 or a.max() > 2):
            raise PublishedError(f"{p}: answer types must be 0 (correct), 1 (incorrect) or 2 (unparseable)")
    return a


def read_vector(p: Path, n: int, dtype) -> np.ndarray:
    """A per-train-row .npy vector of length n."""
    v = read_npy(p).astype(dtype).ravel()
    if v.shape[0] != n:
        raise PublishedError(f"{p}: {v.shape[0]} values, expected {n}")
    return v


def published_runs(src: Path) -> list[Path]:
    """The published run folders in src (src itself when it is one)."""
    if not src.is_dir():
        raise PublishedError(f"{src}: not a folder")

    def is_run(p: Path) -> bool:
        return p.is_dir() and bool(runs.checkpoint_folders(p))

    if is_run(src):
        return [src]
    found = sorted(p for p in src.iterdir() if is_run(p))
    if not found:
        raise PublishedError(f"{src}: no published run folders (<run>/checkpoint-<step>/...) inside")
    return found


@dataclass
class PublishedRun:
    """One published run: its folder, checkpoints in step order, name fields and train rows."""

    src: Path
    checkpoints: list[Path]
    meta: dict
    n_train: int  # rows of the published train arrays (the whole train split)
    sub: np.ndarray  # subsample_idxs.npy: the rows the run trained on, in its order
    rows: np.ndarray  # sorted unique rows of sub: the train records' rows
    files: dict  # (checkpoint folder, split) -> the answer-type file read (answer_file)

    @property
    def task(self) -> str:
        return self.meta["task"]


def choose_answer_files(src: Path, ckpts: list[Path], samples: int | None) -> dict:
    """(checkpoint, split) -> answer-type file (answer_file); one warning per split that falls back to the
    most samples because a checkpoint has no file with `samples` samples."""
    files = {}
    for split in ("train", "test"):
        fallback = []
        for ck in ckpts:
            f, parts = answer_file(ck, split, samples)
            files[(ck, split)] = f
            if parts["fallback"]:
                fallback.append(f.name)
        if fallback:
            warn(f"{src.name}: no {split} answer file with {samples} samples in {len(fallback)} of {len(ckpts)} "
                 f"checkpoint(s); using the one with the most samples ({', '.join(sorted(set(fallback)))})")
    return files


def read_published_run(src: Path, samples: int | None = PREFERRED_SAMPLES) -> PublishedRun:
    """Checkpoints, name fields, train subsample and answer files (see answer_file) of a published run."""
    ckpts = runs.checkpoint_folders(src)
    meta = parse_published_name(src.name)
    files = choose_answer_files(src, ckpts, samples)
    n_train = read_npy(files[(ckpts[0], "train")], "types").shape[0]
    sub_path = src / "subsample_idxs.npy"
    if sub_path.exists():
        sub = read_npy(sub_path)
        if sub.ndim != 1 or sub.dtype.kind not in "iu" or (sub.size and (sub.min() < 0 or sub.max() >= n_train)):
            raise PublishedError(f"{sub_path}: expected 1-D indices into the {n_train} train rows")
    else:
        warn(f"{sub_path}: missing; assuming the run trained on all {n_train} train examples")
        sub = np.arange(n_train)
    return PublishedRun(src, ckpts, meta, n_train, sub, np.unique(sub), files)


def run_config(pr: PublishedRun, model: str | None) -> dict:
    """config.yaml of the imported run; a name without a subset gets the nearest of full/half/quarter."""
    subset = pr.meta["subset"]
    if subset is None:
        frac = pr.rows.size / max(pr.n_train, 1)
        subset = min(zip((abs(frac - f) for f in (1, 0.5, 0.25)), SUBSETS))[1]
    return dict(
        task=pr.task,
        model=model or DEFAULT_MODEL,
        learning_rate=pr.meta["learning_rate"],
        num_epochs=pr.meta["num_epochs"],
        subset=subset,
        batch_size=pr.meta["batch_size"],
        run_name=pr.src.name,
        source=str(pr.src.resolve()),
        published=True,
        checkpoints=[runs.checkpoint_step(c) for c in pr.checkpoints],
        n_train_examples=int(pr.rows.size),
    )


def checkpoint_table(pr: PublishedRun, ck: Path, split: str, step: int, epoch: float):
    """The record table of one published checkpoint and split."""
    f = pr.files[(ck, split)]
    types = read_npy(f, "types")
    if split == "test":
        ids = np.char.add(f"{pr.task}/test/", np.arange(types.shape[0]).astype(str)).tolist()
        return records.record_table(ids, step, epoch, "test", types)
    if types.shape[0] != pr.n_train:
        raise PublishedError(f"{f}: {types.shape[0]} rows, expected {pr.n_train} (one per train example)")
    ppl = train_perplexities(pr, ck)
    tp = ck / "train_num_tokens.npy"
    tok = read_vector(tp, pr.n_train, np.int64) if tp.exists() else np.full(pr.n_train, -1)
    ids = np.char.add(f"{pr.task}/train/", pr.rows.astype(str)).tolist()
    r = pr.rows
    return records.record_table(ids, step, epoch, "train", types[r], ppl[r], tok[r])


def train_perplexities(pr, ck: Path) -> np.ndarray:
    """A checkpoint's train perplexities, checked: finite numbers >= 1, or NaN (not computed)."""
    pp = ck / "train_perplexities.npy"
    if not pp.exists():
        raise PublishedError(f"{pp}: missing (train perplexities are needed for the metric)")
    ppl = read_vector(pp, pr.n_train, np.float64)
    bad = ~(np.isnan(ppl) | ((ppl >= 1 - 1e-6) & np.isfinite(ppl)))
    if bad.any():
        i = int(np.argmax(bad))
        raise PublishedError(f"{pp}: {int(bad.sum())} perplexities are not finite numbers >= 1 (row {i}: {ppl[i]})")
    return ppl


def import_published(src, out, *, model: str | None = None, force: bool = False, progress: bool = True,
                     samples: int | None = PREFERRED_SAMPLES) -> list[Path]:
    """Convert the authors' published ckpts/ folder into run folders under `out` (see module doc).

    One run folder per published run: config.yaml, subset_ids.json and
    records/step-XXXXXX.{train,test}.original.parquet per checkpoint, from the answer files with
    `samples` samples (None: the most samples; see answer_file). Existing files are kept unless
    force. Returns the run folders.
    """
    if samples is not None and samples < 1:
        raise PublishedError(f"--samples must be at least 1, got {samples}")
    src, out = Path(src), Path(out)
    published = [read_published_run(p, samples) for p in published_runs(src)]
    for pr in published:  # every perplexity file checked before anything is written
        for ck in pr.checkpoints:
            train_perplexities(pr, ck)
    counts = {"written": 0, "skipped": 0}

    def write(path: Path, make) -> None:
        if path.exists() and not force:
            counts["skipped"] += 1
            return
        make(path)
        counts["written"] += 1

    dirs = []
    bar = tqdm(total=sum(len(p.checkpoints) for p in published), desc="import-published", unit="ckpt",
               disable=not progress, file=sys.stderr)
    for pr in published:
        run_dir = out / pr.src.name
        dirs.append(run_dir)
        cfg_text = yaml.safe_dump(run_config(pr, model), sort_keys=False)
        ids_text = json.dumps([f"{pr.task}/train/{i}" for i in pr.sub.tolist()]) + "\n"
        write(runs.config_path(run_dir), lambda p: atomic_write_text(p, cfg_text))
        write(runs.subset_ids_path(run_dir), lambda p: atomic_write_text(p, ids_text))
        for k, ck in enumerate(pr.checkpoints):
            step = runs.checkpoint_step(ck)
            epoch = (k + 1) * pr.meta["num_epochs"] / len(pr.checkpoints)
            for split in ("train", "test"):
                write(runs.record_path(run_dir, step, split, "original"),
                      lambda p: records.write_table(p, checkpoint_table(pr, ck, split, step, epoch)))
            bar.update(1)
    bar.close()
    print(f"import-published: {len(dirs)} run(s) under {out}; wrote {counts['written']} file(s), "
          f"kept {counts['skipped']} existing (use --force to rewrite)")
    return dirs
