"""Finetune a causal LM on GSM8K or MATH with the papers' recipes (LoRA / QLoRA, HF Trainer).

    python train.py CONFIG [key=value ...] [--key value ...]
    python train.py configs/demo.yaml learning_rate=1e-4 --num_epochs 2
    python train.py --help-config           # every key, its default and meaning (also docs/settings.md)

Every setting has one name: the YAML key, `key=value`, `--key value` and `--key-with-dashes value` are the
same; Hugging Face TrainingArguments names that mean the same (--num_train_epochs,
--per_device_train_batch_size, --output_dir, ...) are accepted too.

Writes RUN = run_dir: config.yaml, subset_ids.json, log.jsonl, checkpoint-<step>/ at the end of every
epoch, and train_summary.json when done (layout: docs/layout.md). Rerunning the same command after
an interruption resumes from the last complete checkpoint and ends with the same weights.
The library behind it: premem_kit/training/trainer.py.
"""
from __future__ import annotations

import argparse
import json
import sys

from premem_kit.core import cli
from premem_kit.core import config as config_mod
from premem_kit.core import overrides
from premem_kit.core.errors import KitError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="train.py", description=__doc__, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", help="YAML config (see configs/; the demo is configs/demo.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learning_rate=1e-4")
    ap.add_argument("--help-config", action="store_true", help="list every config key and exit")
    overrides.add_setting_options(ap, config_mod.FIELDS)
    return ap


def train(cfg) -> int:
    from premem_kit.training.trainer import run_training

    print(json.dumps(run_training(cfg), indent=2))
    return 0


def load(a) -> config_mod.Config:
    return config_mod.load_config(a.config, overrides.collect(a, a.overrides, config_mod.FIELDS))


def main(argv=None) -> int:
    ap = build_parser()
    a, _ = overrides.parse(ap, argv, config_mod.FIELDS)
    if a.help_config:
        print(config_mod.describe())
        return 0
    if not a.config:
        ap.error("a CONFIG file is required, e.g. python train.py configs/demo.yaml")
    if "=" in a.config and not a.config.endswith((".yaml", ".yml")):
        ap.error(f"the first argument is the CONFIG file; {a.config!r} looks like an override")
    try:
        cfg = load(a)  # every value checked before anything heavy loads
    except KitError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    cli.setup()
    return cli.run("train.py", train, cfg)


if __name__ == "__main__":
    sys.exit(main())
