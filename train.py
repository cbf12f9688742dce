"""Finetune a causal LM on GSM8K or MATH with the papers' recipes (LoRA / QLoRA, HF Trainer).

    python train.py CONFIG [key=value ...]
    python train.py --help-config           # every key, its default and meaning

Writes RUN = run_dir: config.yaml, subset_ids.json, log.jsonl, checkpoint-<step>/ at the end of every
epoch, and train_summary.json when done (layout: docs/layout.md). Rerunning the same command after
an interruption resumes from the last complete checkpoint and ends with the same weights.
The library behind it: premem_kit/training.py.
"""
from __future__ import annotations

import argparse
import json
import sys

from premem_kit import cli
from premem_kit import config as config_mod


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="train.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", help="YAML config (see configs/; the demo is configs/demo.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learning_rate=1e-4")
    ap.add_argument("--help-config", action="store_true", help="list every config key and exit")
    return ap


def train(cfg: dict) -> int:
    from premem_kit.training import run_training

    print(json.dumps(run_training(cfg), indent=2))
    return 0


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.help_config:
        print(config_mod.describe())
        return 0
    if not a.config:
        ap.error("a CONFIG file is required, e.g. python train.py configs/demo.yaml")
    try:
        cfg = config_mod.load_config(a.config, a.overrides)  # before anything heavy loads
    except config_mod.ConfigError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    cli.setup()
    return cli.run("train.py", train, cfg)


if __name__ == "__main__":
    sys.exit(main())
