"""The run-folder layout: every path inside a run, checkpoint names and the `.complete` marker.

    RUN/config.yaml                 the resolved config (every key, after overrides)
    RUN/subset_ids.json             ids of the train examples this run trains on
    RUN/subset_hashes.json          id -> content hash of each train example's prompt and target
    RUN/log.jsonl                   one line per optimizer step: step, epoch, loss, learning_rate, ...
    RUN/train_summary.json          written when training finishes
    RUN/live_premem.jsonl           (live PreMemAcc) one line per checkpoint
    RUN/precision.json              weights dtype, mixed precision and 4-bit compute dtype chosen, and why
    RUN/.lock                       held while train.py or evaluate.py works on the run
    RUN/checkpoint-<step>/          adapter + trainer state (HF Trainer layout) + .complete marker
    RUN/records/step-<step:06d>.<split>.<variant>.parquet   per-example records (records.py schema)
    RUN/greedy/step-<step:06d>.<split>.parquet              greedy answers and likelihoods
    RUN/priors/step-<step:06d>.json                          prior metrics per checkpoint
    RUN/rft_samples/*.jsonl                                  raw samples cached by curate.py rft

Nothing else in the kit builds these paths or parses these names.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from premem_kit.core.errors import KitError

CONFIG = "config.yaml"
SUBSET_IDS = "subset_ids.json"
SUBSET_HASHES = "subset_hashes.json"
LOG = "log.jsonl"
TRAIN_SUMMARY = "train_summary.json"
LIVE_PREMEM = "live_premem.jsonl"
PRECISION = "precision.json"
LOCK = ".lock"
COMPLETE = ".complete"  # written into a checkpoint once it is whole; marks it as the kit's own
RECORDS = "records"
GREEDY = "greedy"

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_RECORD_RE = re.compile(r"^step-(\d+)\.([a-z]+)\.([a-z_]+)\.parquet$")


class RunError(KitError, ValueError):
    """A folder that is not (yet) a run folder as expected; the message says what to run."""


def _file_in_run(name: str):
    """The function run -> RUN/<name> for one file of the layout above."""
    def path(run) -> Path:
        return Path(run) / name
    path.__doc__ = f"RUN/{name}"
    return path


config_path = _file_in_run(CONFIG)
subset_ids_path = _file_in_run(SUBSET_IDS)
subset_hashes_path = _file_in_run(SUBSET_HASHES)
log_path = _file_in_run(LOG)
summary_path = _file_in_run(TRAIN_SUMMARY)
live_premem_path = _file_in_run(LIVE_PREMEM)
lock_path = _file_in_run(LOCK)
precision_path = _file_in_run(PRECISION)


def checkpoint_dir(run, step: int) -> Path:
    return Path(run) / f"checkpoint-{int(step)}"


def checkpoint_step(path) -> int | None:
    """The step of a checkpoint-<step> folder name (None for other names)."""
    m = _CHECKPOINT_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def marker_path(checkpoint) -> Path:
    return Path(checkpoint) / COMPLETE


def is_complete(checkpoint) -> bool:
    return marker_path(checkpoint).exists()


def checkpoint_folders(run) -> list[Path]:
    """Every checkpoint-<step> folder, complete or not, sorted by step."""
    run = Path(run)
    found = [p for p in run.glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def complete_checkpoints(run) -> list[Path]:
    """Checkpoints with the completion marker, sorted by step."""
    return [p for p in checkpoint_folders(run) if is_complete(p)]


def checkpoint_epoch(checkpoint) -> float:
    """The epoch recorded in a checkpoint's completion marker (0.0 when absent)."""
    try:
        return float(json.loads(marker_path(checkpoint).read_text()).get("epoch") or 0.0)
    except (OSError, ValueError, AttributeError):
        return 0.0


def checkpoints(run) -> list[tuple[int, float, Path]]:
    """(step, epoch, folder) of every complete checkpoint, sorted by step."""
    return [(checkpoint_step(p), checkpoint_epoch(p), p) for p in complete_checkpoints(run)]


def find_checkpoint(run, step: int | None = None) -> tuple[int, Path | None]:
    """(step, folder) of checkpoint `step` (None: the last one); step 0 is the base model (folder None)."""
    ckpts = {s: p for s, _, p in checkpoints(run)}
    if step is None:
        if not ckpts:
            raise RunError(f"{run}: no complete checkpoint; run `python train.py` for this run first")
        step = max(ckpts)
    if step == 0:
        return 0, None
    if step not in ckpts:
        have = ", ".join(str(s) for s in sorted(ckpts)) or "none"
        raise RunError(f"{run}: no complete checkpoint-{step} (complete checkpoints: {have}; 0 = base model)")
    return step, ckpts[step]


def records_dir(run) -> Path:
    return Path(run) / RECORDS


def record_path(run, step: int, split: str, variant: str = "original") -> Path:
    return records_dir(run) / f"step-{int(step):06d}.{split}.{variant}.parquet"


def greedy_path(run, step: int, split: str) -> Path:
    """Where the greedy record of a checkpoint is: RUN/greedy/, beside RUN/records/ so that
    pd.read_parquet(RUN/records) reads the sampled records alone; a run folder written before keeps its
    greedy records in RUN/records/greedy-step-*.parquet, and they are found there."""
    legacy = records_dir(run) / f"greedy-step-{int(step):06d}.{split}.parquet"
    return legacy if legacy.exists() else Path(run) / GREEDY / f"step-{int(step):06d}.{split}.parquet"


def list_records(run) -> list[tuple[int, str, str, Path]]:
    """All record files of a run as (step, split, variant, path), sorted by step."""
    out = []
    rdir = records_dir(run)
    if rdir.is_dir():
        for p in rdir.iterdir():
            m = _RECORD_RE.match(p.name)
            if m:
                out.append((int(m.group(1)), m.group(2), m.group(3), p))
    return sorted(out)


def list_greedy(run) -> list[Path]:
    """The greedy record files of a run (RUN/greedy, and RUN/records/greedy-step-* of older runs)."""
    return sorted(list((Path(run) / GREEDY).glob("step-*.parquet")) + list(records_dir(run).glob("greedy-step-*.parquet")))


def priors_path(run, step: int) -> Path:
    return Path(run) / "priors" / f"step-{int(step):06d}.json"


def rft_cache_dir(run) -> Path:
    return Path(run) / "rft_samples"


def read_config(run):
    """A run's config.yaml as a Config: every key checked, keys written by older versions of the kit that it
    lacks take their defaults, so old run folders still load."""
    from premem_kit.core import config as config_mod
    from premem_kit.core.files import read_yaml_mapping

    if not Path(run).is_dir():
        raise RunError(f"{run}: no such run folder")
    p = config_path(run)
    if not p.exists():
        raise RunError(f"{p}: no config.yaml; is {run} a run folder made by train.py?")
    raw = read_yaml_mapping(p, RunError, "run config")
    return config_mod.from_mapping(raw, str(p))  # a hand-edited config.yaml gets a config file's checks


def read_config_as_written(run) -> dict:
    """config.yaml's mapping as written, unchecked: for labels of runs that the kit did not train (imported
    published runs carry keys outside the schema, such as their checkpoints)."""
    from premem_kit.core.files import read_yaml_mapping

    return read_yaml_mapping(config_path(run), RunError, "run config")


def _read_json(p: Path, kind: type, what: str):
    """A run file's JSON, which must be a `kind` (list or dict); a RunError names the file otherwise."""
    try:
        value = json.loads(p.read_text())
    except ValueError as e:
        raise RunError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(value, kind):
        raise RunError(f"{p}: expected {what}")
    return value


def read_train_hashes(run) -> dict | None:
    """id -> content hash of the examples a run trained on (subset_hashes.json; None for runs trained
    before hashes were written, or imported)."""
    p = subset_hashes_path(run)
    return _read_json(p, dict, "a JSON object of id: hash") if p.exists() else None


def read_train_ids(run) -> list[str]:
    """The ids of the examples a run trains on (subset_ids.json)."""
    p = subset_ids_path(run)
    if not p.exists():
        raise RunError(f"{p} missing: train.py writes it when training starts")
    return [str(i) for i in _read_json(p, list, "a JSON list of example ids")]
