"""Evaluate every checkpoint of a run: n samples per prompt and the target perplexity, per example.

    python evaluate.py RUN_DIR [--eval_splits train test] [--eval_variants original first we_know_that]
                               [--eval_samples 5] [--eval_train_examples N] [--eval_test_examples N]
                               [key=value ...] [--steps S ...] [--greedy] [--force]
    accelerate launch --num_processes 2 evaluate.py RUN_DIR ...     # shards prompts across processes

The settings are the run's eval_* config keys (config.yaml); the same keys given here, as --key value
or key=value, override them for this call. Writes one Parquet file per checkpoint x split x variant to
RUN/records/ (schema: docs/layout.md), skipping files that are whole (--force redoes them). Step 0, the
untrained base model, is evaluated with --eval_base_model true (the authors do not).
The library behind it: premem_kit/evaluation/evaluation.py.
"""
from __future__ import annotations

import argparse
import sys

from premem_kit.core import cli
from premem_kit.core import overrides
from premem_kit.core.config import EVAL_KEYS


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="evaluate.py", description=__doc__, allow_abbrev=False,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a run folder written by train.py")
    ap.add_argument("overrides", nargs="*", help="eval_* key=value overrides, e.g. eval_samples=4")
    ap.add_argument("--steps", type=cli.positive_int, nargs="+", help="only these checkpoint steps")
    ap.add_argument("--greedy", action="store_true", help="also the greedy answer and its likelihood (ATC)")
    ap.add_argument("--force", action="store_true", help="redo records that exist")
    overrides.add_setting_options(ap, EVAL_KEYS, "evaluation settings (the run's eval_* config keys)")
    return ap


def options(a):
    from premem_kit.evaluation.evaluation import EvalOptions

    return EvalOptions(settings=overrides.collect(a, a.overrides, EVAL_KEYS), steps=a.steps, greedy=a.greedy,
                       force=a.force)


def print_summary(summary: list[dict]) -> None:
    print(f"\n{'step':>6} {'epoch':>6} {'split':6} {'variant':13} {'accuracy':>8} {'n':>6} {'mean ppl':>9}")
    for r in summary:
        mp = f"{r['mean_perplexity']:.3f}" if r["mean_perplexity"] else "-"
        print(f"{r['step']:>6} {r['epoch']:>6.2f} {r['split']:6} {r['variant']:13} {r['accuracy']:>8.3f} "
              f"{r['n']:>6} {mp:>9}")
    cut = sum(r["targets_cut"] for r in summary if r["split"] == "train" and r["variant"] == "original")
    if cut:
        print(f"warning: {cut} train target(s) were cut at max_length; their perplexity covers only "
              f"part of the target (column target_cut)")


def evaluate(a) -> int:
    from premem_kit.core.parallel import dist_state
    from premem_kit.evaluation.evaluation import evaluate_run

    summary = evaluate_run(a.run_dir, options(a))
    if dist_state().is_main_process:
        print_summary(summary)
    return 0


def main(argv=None) -> int:
    ap = build_parser()
    a, _ = overrides.parse(ap, argv, EVAL_KEYS, not_here=" (it was fixed when the run was trained); evaluate.py "
                                                        "takes the eval_* keys")
    code = cli.run("evaluate.py", options, a)  # option values checked before anything heavy loads
    if code:
        return code
    cli.setup()
    return cli.run("evaluate.py", evaluate, a)


if __name__ == "__main__":
    sys.exit(main())
