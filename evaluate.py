"""Evaluate every checkpoint of a run: n samples per prompt and the target perplexity, per example.

    python evaluate.py RUN_DIR [--splits train test] [--variants original first we_know_that]
                               [--samples 5] [--train-examples N] [--test-examples N] [--greedy] [--force]
    accelerate launch --num_processes 2 evaluate.py RUN_DIR ...     # shards prompts across processes

Defaults come from the run's config.yaml (eval_* keys); flags override them. Writes one Parquet file per
checkpoint x split x variant to RUN/records/ (schema: docs/layout.md), skipping files that are whole
(--force redoes them). Step 0, the untrained base model, is evaluated with --base (the authors do not).
The library behind it: premem_kit/evaluation.py.
"""
from __future__ import annotations

import argparse
import sys

from premem_kit import cli
from premem_kit.records import SPLITS, VARIANTS


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="evaluate.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a run folder written by train.py")
    ap.add_argument("--splits", nargs="+", choices=SPLITS)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS))
    ap.add_argument("--samples", type=int, help="samples per prompt (config eval_samples; paper 5)")
    ap.add_argument("--temperature", type=float, help="sampling temperature (paper 0.8)")
    ap.add_argument("--top-p", type=float, help="nucleus sampling p (paper: 0.95 GSM8K, 1.0 MATH)")
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--batch-size", type=int, help="prompts per generate call (halves on CUDA OOM)")
    ap.add_argument("--ppl-batch-size", type=int, help="examples per perplexity forward pass")
    ap.add_argument("--train-examples", type=int, help="seeded fixed subsample of N train ids")
    ap.add_argument("--test-examples", type=int, help="first N test examples")
    ap.add_argument("--seed", type=int, help="sampling seed (config eval_seed)")
    ap.add_argument("--steps", type=int, nargs="+", help="only these checkpoint steps")
    base = ap.add_mutually_exclusive_group()
    base.add_argument("--base", action="store_true",
                      help="also evaluate the untrained base model as step 0 (config eval_base_model)")
    base.add_argument("--no-base", action="store_true", help="skip the base model (step 0)")
    ap.add_argument("--greedy", action="store_true", help="also the greedy answer and its likelihood (ATC)")
    ap.add_argument("--force", action="store_true", help="redo records that exist")
    return ap


def options(a):
    from premem_kit.evaluation import EvalOptions

    opts = EvalOptions(splits=a.splits, variants=a.variants, samples=a.samples, temperature=a.temperature,
                       top_p=a.top_p, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size,
                       ppl_batch_size=a.ppl_batch_size, train_examples=a.train_examples,
                       test_examples=a.test_examples, seed=a.seed, steps=a.steps,
                       base=True if a.base else False if a.no_base else None, greedy=a.greedy, force=a.force)
    opts.check()
    return opts


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
    from premem_kit.evaluation import evaluate_run
    from premem_kit.parallel import dist_state

    summary = evaluate_run(a.run_dir, options(a))
    if dist_state().is_main_process:
        print_summary(summary)
    return 0


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    code = cli.run("evaluate.py", options, a)  # option ranges, before anything heavy loads
    if code:
        return code
    cli.setup()
    return cli.run("evaluate.py", evaluate, a)


if __name__ == "__main__":
    sys.exit(main())
