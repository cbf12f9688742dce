"""Run-folder layout, per-example records, and atomic file writes.

Every later stage (premem.py, curate.py, the robustness and prior-metric analyses) reads what this
module defines, so the layout and the record schema live in one place.

Run folder (one training run)::

    RUN/config.yaml                 resolved config (every key, after overrides)
    RUN/subset_ids.json             ids of the train examples this run trains on
    RUN/log.jsonl                   one line per optimizer step: step, epoch, loss, learning_rate
    RUN/checkpoint-<step>/          adapter + trainer state (HF Trainer layout) + .complete marker
    RUN/records/step-<step>.<split>.<variant>.parquet   per-example records (evaluate.py)

Record files: one Parquet file per checkpoint x split x variant, one row per example, columns
RECORD_COLUMNS below. Step 0 is the untrained base model.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pandas as pd

OUTCOMES = ("correct", "incorrect", "unparseable")
SPLITS = ("train", "test")
VARIANTS = {"original": "", "first": " First", "we_know_that": " We know that"}

# name -> (pandas/arrow type, meaning)
RECORD_COLUMNS = {
    "id": ("string", "stable example id, e.g. gsm8k/train/42"),
    "step": ("int64", "optimizer step of the checkpoint (0 = base model)"),
    "epoch": ("float64", "epoch of the checkpoint (0.0 for the base model)"),
    "split": ("string", "train or test"),
    "variant": ("string", "prompt variant: original, first, we_know_that"),
    "samples": ("list<string>", "the n sampled completions, stop string removed"),
    "answers": ("list<string>", "extracted final answer per sample (null when unparseable)"),
    "outcomes": ("list<string>", "per sample: correct, incorrect or unparseable"),
    "accuracy": ("float64", "fraction of samples that are correct"),
    "perplexity": ("float64", "teacher-forced perplexity of the target (NaN when not computed)"),
    "target_tokens": ("int64", "number of target tokens the perplexity averages over"),
}

_RECORD_RE = re.compile(r"^step-(\d+)\.([a-z]+)\.([a-z_]+)\.parquet$")


def record_path(run_dir, step: int, split: str, variant: str = "original") -> Path:
    return Path(run_dir) / "records" / f"step-{int(step):06d}.{split}.{variant}.parquet"


def list_records(run_dir) -> list[tuple[int, str, str, Path]]:
    """All record files of a run as (step, split, variant, path), sorted by step."""
    out = []
    rdir = Path(run_dir) / "records"
    if rdir.is_dir():
        for p in rdir.iterdir():
            m = _RECORD_RE.match(p.name)
            if m:
                out.append((int(m.group(1)), m.group(2), m.group(3), p))
    return sorted(out)


_UMASK = os.umask(0)
os.umask(_UMASK)


def _publish(tmp: str, path: Path) -> None:
    """Give the temp file ordinary permissions (mkstemp makes it 0600) and rename it into place."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_parquet(path, df: pd.DataFrame) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        _publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_records(path, rows: list[dict]) -> pd.DataFrame:
    """Validate rows against RECORD_COLUMNS and write them atomically as Parquet."""
    df = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
    missing = [c for c in RECORD_COLUMNS if c not in (rows[0] if rows else {})] if rows else []
    if missing:
        raise ValueError(f"record rows lack columns {missing}")
    for r in rows:
        bad = [o for o in r["outcomes"] if o not in OUTCOMES]
        if bad:
            raise ValueError(f"record {r['id']}: outcome {bad[0]!r} is not one of {OUTCOMES}")
    df["id"] = df["id"].astype(str)
    df["step"] = df["step"].astype("int64")
    df["epoch"] = df["epoch"].astype("float64")
    df["accuracy"] = df["accuracy"].astype("float64")
    df["perplexity"] = df["perplexity"].astype("float64")
    df["target_tokens"] = df["target_tokens"].astype("int64")
    atomic_write_parquet(path, df)
    return df


def read_records(path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    missing = [c for c in RECORD_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a record file, missing columns {missing}")
    return df


def read_run_config(run_dir) -> dict:
    import yaml

    p = Path(run_dir) / "config.yaml"
    if not p.exists():
        raise FileNotFoundError(f"{p}: no config.yaml; is {run_dir} a run folder made by train.py?")
    with open(p) as f:
        return yaml.safe_load(f) or {}
