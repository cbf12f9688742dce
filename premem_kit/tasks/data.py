"""Datasets: GSM8K and MATH from the Hub or local JSONL, the authors' prompt/target format,
seeded train subsets, and tokenization with the loss on target tokens only.

Every example is a dict with
    id         stable id carried by every later stage, e.g. "gsm8k/train/42" (index in the split)
    question   the problem text
    solution   the reference solution text (GSM8K `answer`, MATH `solution`)
    reference  the final answer the grader compares with (GSM8K: number after ####; MATH: last \\boxed)
    prompt     question + "\\nAnswer:"
    target     " " + solution + "\\nDone."
    (MATH also: level (int), type)
"""
from __future__ import annotations

import random
from pathlib import Path

from premem_kit.tasks import grading
from premem_kit.core.errors import KitError
from premem_kit.core import runs
from premem_kit.core.config import Config, DataSettings, parse_fraction
from premem_kit.core.files import JsonlError
from premem_kit.core.hub import datasets_offline, load_failure, offline_reason
from premem_kit.core.files import read_jsonl as _read_jsonl_file

PROMPT_SUFFIX = "\nAnswer:"
TARGET_END = "\nDone."
SUBSET_FRACTIONS = {"full": 1, "half": 2, "quarter": 4}


class DataError(KitError, ValueError):
    """Bad or missing data; the message names the file (and line)."""


def make_prompt(question: str, variant_text: str = "") -> str:
    """The authors' prompt; `variant_text` (e.g. " First") is appended after "Answer:"."""
    return question + PROMPT_SUFFIX + variant_text


def make_target(solution: str) -> str:
    return " " + solution + TARGET_END


# ----------------------------------------------------------------------------- reading files

def read_jsonl(path, required=(), numbered: bool = False) -> list:
    """Rows of a JSONL file; a malformed line is an error naming the file and line number.
    numbered=True gives (line number, row) pairs."""
    try:
        return _read_jsonl_file(path, required, numbered=numbered)
    except JsonlError as e:
        raise DataError(str(e)) from None


def located_rows(path, required=()) -> list[tuple[str, dict]]:
    """(where, row) pairs of a JSONL file, where = "FILE, line N" for messages about that row."""
    return [(f"{path}, line {n}", r) for n, r in read_jsonl(path, required, numbered=True)]


def _local_split(folder: Path, split: str, required) -> list[tuple[str, dict]]:
    p = folder / f"{split}.jsonl"
    if not p.is_file():
        have = sorted(x.name for x in folder.iterdir()) if folder.is_dir() else []
        what = "has a folder named" if p.exists() else "has no"
        raise DataError(f"data folder {folder} {what} {split}.jsonl (found: {have or 'nothing'}); "
                        f"expected train.jsonl and test.jsonl files in the original schema")
    return located_rows(p, required)


def _hub_split(name: str, config, split: str) -> list[tuple[str, dict]]:
    import contextlib

    offline = offline_reason()
    try:
        import datasets

        with datasets_offline() if offline else contextlib.nullcontext():
            ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # offline, unknown id, ...
        raise DataError(load_failure(
            f"dataset '{name}' (config {config!r}, split {split})", e, offline,
            "Point 'data' at a local folder holding train.jsonl and test.jsonl instead (e.g. "
            "data=data/gsm8k_demo, shipped with this repo).")) from None
    return [(f"{name} ({split} split) row {i}", dict(r)) for i, r in enumerate(ds)]


def _is_local(data: str) -> bool:
    """A path that exists, or that is written as a path (./x, ../x, /x, ~/x), is local; else a Hub id."""
    return Path(data).expanduser().exists() or data.startswith((".", "/", "~"))


def _rows(data: str, config, split: str, required) -> list[tuple[str, dict]]:
    if _is_local(data):
        folder = Path(data).expanduser()
        if folder.is_file():
            raise DataError(f"data={data} is a file; 'data' takes a folder holding train.jsonl and test.jsonl "
                            f"(a file of extra train examples goes in train_file)")
        if not folder.is_dir():
            raise DataError(f"data folder {folder} does not exist")
        return _local_split(folder, split, required)
    return _hub_split(data, config, split)


# ----------------------------------------------------------------------------- tasks

def _text(row: dict, key: str, where: str) -> str:
    v = row.get(key)
    if not isinstance(v, str) or not v.strip():
        raise DataError(f"{where}: '{key}' must be non-empty text, got {v!r}")
    return v


def row_id(row: dict, default: str, where: str) -> str:
    """A row's own id as text (an integer id too, 0 included), else its position id."""
    v = row.get("id")
    if v is None or (isinstance(v, str) and not v.strip()):
        return default
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise DataError(f"{where}: 'id' must be text or an integer, got {v!r}")
    return str(v)


def gsm8k_example(row: dict, split: str, index: int, where: str = "") -> dict:
    where = where or f"{split} example {index}"
    q, sol = _text(row, "question", where), _text(row, "answer", where)
    if "####" not in sol:
        raise DataError(f"{where}: the GSM8K answer has no final '#### <number>' line: {sol[-80:]!r}")
    return {"id": row_id(row, f"gsm8k/{split}/{index}", where), "question": q, "solution": sol,
            "reference": grading.gsm8k_reference(sol), "prompt": make_prompt(q), "target": make_target(sol)}


def math_example(row: dict, split: str, index: int, where: str = "") -> dict:
    where = where or f"{split} example {index}"
    q, sol = _text(row, "problem", where), _text(row, "solution", where)
    if grading.math_reference(sol) is None:
        raise DataError(f"{where}: the MATH solution has no \\boxed{{...}} final answer, so no sample could be "
                        f"graded correct; fix or remove that example")
    level = row.get("level")
    if isinstance(level, str):
        digits = "".join(c for c in level if c.isdigit())
        level = int(digits) if digits else None
    return {"id": row_id(row, f"math/{split}/{index}", where), "question": q, "solution": sol,
            "reference": grading.math_reference(sol), "prompt": make_prompt(q), "target": make_target(sol),
            "level": level, "type": row.get("type")}


def load_split(settings: DataSettings, split: str) -> list[dict]:
    """All examples of one split of the task and data a config names, in the dataset's order; ids are
    indices into that order."""
    task, data, data_config, math_levels = settings.task, settings.data, settings.data_config, settings.math_levels
    if task == "gsm8k":
        rows = _rows(data, data_config or ("main" if data == "openai/gsm8k" else None), split,
                     ("question", "answer"))
        exs = [gsm8k_example(r, split, i, w) for i, (w, r) in enumerate(rows)]
    elif task == "math":
        rows = _rows(data, data_config, split, ("problem", "solution"))
        exs = [math_example(r, split, i, w) for i, (w, r) in enumerate(rows)]
        if math_levels:
            exs = [e for e in exs if e["level"] in set(math_levels)]
    else:
        raise DataError(f"unknown task '{task}'; expected gsm8k or math")
    if not exs:
        raise DataError(f"{data}: split '{split}' has no examples")
    return exs


def load_extra_file(path, task: str) -> list[dict]:
    """A JSONL of extra train examples: GSM8K schema (question, answer) or MATH (problem, solution),
    optional `id` (kept) and provenance keys (kept under 'meta')."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"train_file {p} does not exist")
    req = ("question", "answer") if task == "gsm8k" else ("problem", "solution")
    if not p.is_file():
        raise DataError(f"train_file {p} is not a file")
    rows = located_rows(p, req)
    make = gsm8k_example if task == "gsm8k" else math_example
    out = []
    for i, (where, r) in enumerate(rows):
        ex = make(r, "extra", i, where)
        if ex["id"] == f"{task}/extra/{i}":  # no id of its own: named after the file
            ex["id"] = f"{p.stem}/{i}"
        ex["meta"] = {k: v for k, v in r.items() if k not in req and k != "id"}
        out.append(ex)
    return out


def subset_ids(ids: list[str], subset: str, seed: int) -> list[str]:
    """A seeded, fixed subset: the first 1/k of a seeded permutation (k = 1, 2, 4)."""
    if subset not in SUBSET_FRACTIONS:
        raise DataError(f"subset must be one of {list(SUBSET_FRACTIONS)}, got {subset!r}")
    order = list(ids)
    random.Random(seed).shuffle(order)
    n = len(order) // SUBSET_FRACTIONS[subset]
    return order[:n]


def sample_ids(ids: list[str], n, seed: int) -> list[str]:
    """A seeded fixed subsample of n ids, returned in their original order (all when n is None)."""
    if n is None or n >= len(ids):
        return list(ids)
    chosen = set(random.Random(seed).sample(list(ids), n))
    return [i for i in ids if i in chosen]


def train_examples(cfg: DataSettings | Config) -> list[dict]:
    """The examples a run trains on, as the config says (subset, cap, extra train_file)."""
    full = load_split(cfg, "train")
    if cfg.train_file and cfg.train_file_mode == "replace":
        full = load_extra_file(cfg.train_file, cfg.task)
        extra = []
    else:
        extra = load_extra_file(cfg.train_file, cfg.task) if cfg.train_file else []
    by_id = {e["id"]: e for e in full}
    if len(by_id) != len(full):
        seen, dup = set(), None
        for e in full:
            dup = dup or (e["id"] if e["id"] in seen else None)
            seen.add(e["id"])
        raise DataError(f"train examples have duplicate ids (first: {dup!r}); ids must be unique")
    clash = [e["id"] for e in extra if e["id"] in by_id]
    if clash:
        raise DataError(f"train_file {cfg.train_file}: id {clash[0]!r} (and {len(clash) - 1} more) is also an id "
                        f"of the {cfg.task} train split; give appended examples ids of their own")
    ids = subset_ids([e["id"] for e in full], cfg.subset, cfg.seed)
    if cfg.subset_fraction is not None:  # a prefix of the same seeded order: nested subsets
        ids = ids[: max(1, int(len(ids) * parse_fraction(cfg.subset_fraction)))]
    if cfg.max_train_examples:
        ids = ids[: cfg.max_train_examples]
    return [by_id[i] for i in ids] + extra


def example_hash(example: dict) -> str:
    """What a row measured: a hash of the example's prompt and target (16 hex digits of sha256). Ids are
    positions in a file; the hash notices when the question under an id changed."""
    import hashlib

    return hashlib.sha256(f"{example['prompt']}\0{example['target']}".encode("utf-8")).hexdigest()[:16]


def run_train_examples(run, cfg: DataSettings | None = None) -> list[dict]:
    """The examples a trained run trained on, in subset_ids.json's order, rebuilt from its data (the
    task's train split and its train_file): what evaluation, Algorithm 1 and RFT score. An example whose
    prompt or target is not what the run trained on (subset_hashes.json) is an error, not a silent swap."""
    cfg = cfg or runs.read_config(run)
    ids = runs.read_train_ids(run)
    pool = load_split(cfg, "train") + (load_extra_file(cfg.train_file, cfg.task) if cfg.train_file else [])
    by_id = {e["id"]: e for e in pool}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DataError(f"{runs.subset_ids_path(run)}: {len(missing)} id(s) are not in the run's data "
                        f"(first: {missing[0]}); was the data folder or train_file changed after training?")
    hashes = runs.read_train_hashes(run)
    changed = [i for i in ids if hashes is not None and i in hashes and hashes[i] != example_hash(by_id[i])]
    if changed:
        raise DataError(f"{runs.subset_hashes_path(run)}: {len(changed)} of the run's {len(ids)} train examples "
                        f"are not the questions it was trained on (first: {changed[0]}): the data "
                        f"({cfg.data}{', ' + cfg.train_file if cfg.train_file else ''}) changed after training. "
                        f"Put back the data the run was trained on, or train a new run on the new data.")
    return [by_id[i] for i in ids]


# ----------------------------------------------------------------------------- tokenization

def tokenize_prompt(tokenizer, prompt: str, max_length: int | None = None) -> tuple[list[int], bool]:
    """A prompt's tokens (with the tokenizer's special tokens) and whether they were cut.

    The kit's one prompt-length policy, the same in training, perplexity and sampling: a prompt of more
    than max_length - 1 tokens keeps its BOS and its last tokens, max_length - 1 in all, so that its end
    ("...\nAnswer:") and at least one target token fit. Without it a 1 MB question would be 200,000 tokens.
    """
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if max_length is None or len(ids) <= max_length - 1:
        return ids, False
    head = ids[:1] if tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id else []
    keep = max(max_length - 1 - len(head), 1)
    return head + ids[len(ids) - keep:], True


def encode(tokenizer, prompt: str, target: str, max_length: int | None = None) -> dict:
    """input_ids = prompt tokens + target tokens; labels = -100 on the prompt (no loss there).

    The prompt is tokenized with the tokenizer's special tokens (BOS), the target without, and the two
    are concatenated, so the target tokens are the same whatever the prompt variant. Perplexity in
    evaluate.py averages over exactly the positions with labels != -100 here. `target_cut` says that
    max_length cut the target (a prompt near max_length leaves as little as one target token), and
    `prompt_cut` that the prompt was cut from the left (tokenize_prompt).
    """
    p, prompt_cut = tokenize_prompt(tokenizer, prompt, max_length)
    t = tokenizer(target, add_special_tokens=False)["input_ids"]
    full = len(t)
    if max_length is not None and len(p) + len(t) > max_length:
        t = t[: max(max_length - len(p), 1)]
    ids = p + t
    return {"input_ids": ids, "labels": [-100] * len(p) + list(t), "attention_mask": [1] * len(ids),
            "target_cut": len(t) < full, "prompt_cut": prompt_cut}


class Collator:
    """Pads a list of encoded examples to the longest (right padding for training)."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        self.pad = pad_token_id
        self.side = padding_side

    def __call__(self, feats):
        import torch

        n = max(len(f["input_ids"]) for f in feats)
        out = {"input_ids": [], "labels": [], "attention_mask": []}
        for f in feats:
            k = n - len(f["input_ids"])
            for key, fill in (("input_ids", self.pad), ("labels", -100), ("attention_mask", 0)):
                seq = list(f[key])
                out[key].append(seq + [fill] * k if self.side == "right" else [fill] * k + seq)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
