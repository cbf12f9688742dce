"""Pre-memorization train accuracy (PreMemAcc), Kang et al. (ICML 2025), "What Do Learning Dynamics
Reveal About Generalization in LLM Reasoning?": predict test accuracy from train-set learning dynamics.

    python premem.py analyze RUN_DIR... --out DIR [--threshold LOGLOG | --threshold-ppl P |
                                                   --calibrate-on RUN...] [--fragile-t 0.75]
    python premem.py fetch-published OUT_DIR [--tasks gsm8k math] [--samples 5 | --all-samples]
                                     [--base-url URL] [--timeout 20]
    python premem.py import-published SRC_CKPTS_DIR OUT_DIR [--model NAME] [--force] [--samples N | --most-samples]
    python premem.py robustness RUN --out DIR [--step N] [--threshold LOGLOG | ...]      (Figures 6-7)
    python premem.py priors RUN [RUN ...] --out DIR [--atc-reference RUN] [...]           (Figure 5)

The library behind it: premem_kit/metric.py (the metric), calibration.py, analysis.py and
analysis_figures.py (analyze), published.py (import-published), robustness.py, priors.py and
prior_metrics.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from premem_kit.core import cli
from premem_kit.analysis.defaults import (ATC_FIT_ON, ATC_SCORES, DEFAULT_BINS, DEFAULT_FIG6_EXAMPLES,
                                          DEFAULT_FRAGILE_T, DEFAULT_GRAD_BATCHES, DEFAULT_GRAD_SEED, DEFAULT_MODEL,
                                          DEFAULT_SWEEP, EARLIER_BINS, GRAD_DRAWS, GRAD_LOSSES)

THRESHOLD_HELP = """threshold convention:
  memorized <=> perplexity < P <=> log(log(perplexity)) < X, with P = exp(exp(X)), X = log(log(P)).
  --threshold takes X (the authors' convention), --threshold-ppl takes P; e.g. X = -2.5 <=> P = 1.0855.
  A perplexity <= 1 has log(log) = -inf: memorized under every finite X. NaN perplexity: memorized.
  PreMemAcc_m = min(max_{1 <= m' <= m} acc_m' * 1[not memorized_m'], acc_m) over trained checkpoints
  (step 0, the base model, only with --include-step0)."""

ANALYZE_DOC = (
    "Memorized at checkpoint m: target perplexity < p. PreMemAcc_m = "
    "min(max_{m'<=m} acc_m' * 1[not memorized_m'], acc_m); its mean over a run's train examples "
    "predicts test accuracy. Threshold p as a perplexity (--threshold-ppl) or as "
    "log(log(perplexity)) like the authors (--threshold; p = exp(exp(X))); perplexity <= 1 is "
    "always memorized. Default: calibrate on all runs (maximize R^2 of test acc vs y = x over a "
    "loglog grid). Checkpoints are the trained ones, as the paper; step 0 (base model) records count "
    "only with --include-step0. Points (calibration, R^2, figures) are Figure 4's: every checkpoint of a "
    "full run, a half or quarter run's at 1/3, 2/3 and the end of training (--all-checkpoints: all)."
)

ROBUSTNESS_DOC = """Robustness of a train example's answer to a small change of the prompt (Kang et al., Figures 6-7).

    python premem.py robustness RUN --out DIR [--step N] [--threshold LOGLOG | --threshold-ppl P |
                                               --threshold-from SUMMARY_JSON | --calibrate]
                                               [--bins 0 0.2 0.4 0.6 0.8 1] [--no-bin-for-one]

Needs the run's train records for the prompt variants (original, " First", " We know that" appended
after "Answer:"), which evaluate.py writes with (10 samples per prompt, as the authors' Figure 7; STEP the
checkpoint to analyze, e.g. the run's last)

    python evaluate.py RUN --eval_splits train --eval_variants first we_know_that --eval_samples 10 --steps STEP

What it computes, at one checkpoint m (default: the last one with train records of every variant):
  * PreMemAcc[m, i] of every train example from the *original* records (only they carry the target
    perplexity), at the task's fixed memorization threshold by default (GSM8K -2.3, MATH -1.7, as the
    authors' Figure 7), or given, or read from an analyze summary.json, or calibrated on this one run
    (--calibrate, the kit's earlier default);
  * examples binned by PreMemAcc, as the authors: [0, 0.2), [0.2, 0.4), ..., [0.8, 1) and a bin of its
    own for PreMemAcc = 1 (--no-bin-for-one: the last bin closed [edge, 1] instead; the kit's earlier
    bins were --bins 0 0.25 0.5 0.75 1 --no-bin-for-one);
  * per bin and variant the accuracy distribution (Figure 7: violins, the mean as a line) and the mean
    (table); the Spearman rank correlation (scipy) between PreMemAcc and the accuracy under each
    perturbed prompt, and under both pooled (mean of the two perturbed accuracies per example);
  * Figure 6-style panel: a few examples spread over the PreMemAcc range, the model's first sample
    under each prompt, marked correct or not.

Outputs (atomic): DIR/robustness_table.csv, DIR/robustness.json (table, correlations, threshold, step),
DIR/robustness_examples.csv (one row per example: PreMemAcc, bin, accuracy per variant),
DIR/fig6_examples.json, DIR/figures/fig7.{png,pdf}, DIR/figures/fig6.{png,pdf}.
"""

PRIORS_DOC = """The generalization metrics proposed before PreMemAcc (Kang et al., appendix B; Figure 5).

    python premem.py priors RUN [RUN ...] --out DIR [--atc-reference RUN] [--atc-fit-on train|test]
                            [--atc-score sequence|token-mean] [--threshold LOGLOG | --threshold-ppl P |
                            --threshold-from SUMMARY_JSON | --calibrate] [--grad-batches 5]
                            [--grad-batch-size B] [--grad-draw first|random] [--grad-loss example|token]
                            [--seed 0] [--distance-all-weights] [--force]

Per checkpoint of every run (step 0 has no checkpoint and is left out); the defaults follow the authors'
code (reasoning_data: gsm8k_eval_grad_var.py, gsm8k_eval_weight_norm.py, gsm8k_eval.py,
gsm8k_orig_line_baselines.ipynb), each option named "earlier" keeps the kit's earlier rule
(definitions: premem_kit/analysis/prior_metrics.py, docs/commands.md):

gradient variance
    of the training loss's gradient over the trainable parameters (LoRA A and B; every weight with
    lora_r 0), across --grad-batches (5) minibatches of --grad-batch-size (default the run's batch_size):
    the first 5 x B of the run's train examples in the split's order (--grad-draw random: seeded draws,
    earlier), the loss the mean of per-example mean token losses (--grad-loss token: the token-weighted
    mean, earlier); elementwise population variance, averaged over all elements; dropout off.
distance from initialization
    the sum of squared changes from the initial model over every weight but the input embedding and the
    output layer (--distance-all-weights: every weight, earlier); with LoRA, sum ||s B A||^2 over adapted
    layers from the adapter file (B = 0 at initialization).
ATC (Average Thresholded Confidence)
    the score of an example is its greedy response's whole log-probability (evaluate.py --greedy;
    --atc-score token-mean: the per-token mean, earlier). The threshold is fitted on the reference run
    (default: 3 epochs, full train set, lr 2e-5, the authors' reference, 2e-4 for LoRA; else the first run)
    at its last checkpoint: the fraction of its train examples above it equals its test accuracy
    (--atc-fit-on test: of its test examples, earlier). Each run's predicted test accuracy is the fraction
    of its train examples above it. Needs: python evaluate.py RUN --eval_splits train --greedy.

Figure 5 plots each metric against the generalization gap, train accuracy - test accuracy, over all runs
and checkpoints, Pearson r in each panel title; ATC and PreMemAcc enter as predicted gaps (train accuracy
- prediction), PreMemAcc at the task's threshold (GSM8K -2.3, MATH -1.7, as the authors), or given, or
--calibrate. Gradient variance and distance are cached per checkpoint in RUN/priors/step-XXXXXX.json with
their settings (--no-grad-variance reuses a cached distance over the same weights; --force recomputes).
Outputs: DIR/priors.csv, DIR/priors.json (points, Pearson r, ATC threshold and reference),
DIR/figures/fig5.{png,pdf}.
"""


# ----------------------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="premem.py",
        description="Pre-memorization train accuracy (Kang et al., ICML 2025): predict test accuracy "
        "from train-set learning dynamics.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=THRESHOLD_HELP,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_analyze(sub)
    add_fetch_published(sub)
    add_import_published(sub)
    add_robustness(sub)
    add_priors(sub)
    return ap


def add_analyze(sub) -> None:
    an = sub.add_parser("analyze", help="PreMemAcc per run/checkpoint, threshold calibration, tables and figures",
                        formatter_class=argparse.RawDescriptionHelpFormatter, description=ANALYZE_DOC)
    an.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (globs fine)")
    an.add_argument("--out", required=True, type=cli.out_folder, help="output folder")
    g = an.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=cli.finite_float, metavar="LOGLOG",
                   help="memorization threshold on log(log(perplexity)) (e.g. -2.5 = perplexity 1.0855)")
    g.add_argument("--threshold-ppl", type=cli.perplexity_threshold, metavar="P",
                   help="memorization threshold on perplexity (> 1)")
    g.add_argument("--calibrate-on", nargs="+", metavar="RUN",
                   help="calibrate on these runs (names, paths or globs); report held-out R^2 on the others")
    an.add_argument("--fragile-t", type=float, default=DEFAULT_FRAGILE_T,
                    help="fragile = PreMemAcc at the last checkpoint < this (default %(default)s)")
    an.add_argument("--sweep-min", type=float, default=DEFAULT_SWEEP[0], help="loglog grid min (default %(default)s)")
    an.add_argument("--sweep-max", type=float, default=DEFAULT_SWEEP[1], help="loglog grid max (default %(default)s)")
    an.add_argument("--sweep-points", type=int, default=DEFAULT_SWEEP[2], help="grid points (default %(default)s)")
    an.add_argument("--variant", default="original", help="prompt variant of the records (default %(default)s)")
    st = an.add_mutually_exclusive_group()
    st.add_argument("--include-step0", action="store_true",
                    help="count step-0 (base model) records as a checkpoint (a point, and part of the running max)")
    st.add_argument("--no-step0", action="store_true", help="ignore step-0 records (the default, as the paper)")
    an.add_argument("--all-checkpoints", action="store_true",
                    help="every checkpoint with a test record is a point (the kit's earlier rule); default: Figure "
                         "4's, every checkpoint of a full run and a half or quarter run's at 1/3, 2/3 and the end "
                         "of its training, as the authors plot them")
    an.add_argument("--fig3-run", help="run shown in fig3 (default: the first run with the most checkpoints)")
    an.add_argument("--bootstrap", type=cli.nonnegative_int, default=1000, metavar="N",
                    help="resamples of the questions for R^2's 95%% intervals (default %(default)s; 0: none)")
    an.add_argument("--no-figures", action="store_true", help="skip the figures")


def add_import_published(sub) -> None:
    ip = sub.add_parser(
        "import-published",
        help="convert the authors' published ckpts/ folder into run folders with records",
        description="SRC: a ckpts/ folder of published runs (or one run folder). OUT gets one run folder "
        "per published run: config.yaml, subset_ids.json, records/step-XXXXXX.{train,test}.original.parquet. "
        "Existing files are kept (rerun is cheap) unless --force.",
    )
    ip.add_argument("src", type=Path, metavar="SRC")
    ip.add_argument("out", type=Path, metavar="OUT")
    ip.add_argument("--model", default=None, help=f"model name for config.yaml (default {DEFAULT_MODEL})")
    ip.add_argument("--force", action="store_true", help="rewrite existing files")
    ns = ip.add_mutually_exclusive_group()
    ns.add_argument("--samples", type=cli.positive_int, default=5, metavar="N",
                    help="read the answer files with N samples per example (default %(default)s, the files the "
                         "authors analyse); a checkpoint without one falls back to the most samples, with a warning")
    ns.add_argument("--most-samples", action="store_true",
                    help="read the answer file with the most samples (e.g. 50) in every checkpoint (the kit's "
                         "earlier choice)")


def add_fetch_published(sub) -> None:
    fp = sub.add_parser(
        "fetch-published", help="download the authors' published per-example results (checksummed, resumable)",
        description="Downloads, from the authors' public repository github.com/katiekang1998/reasoning_generalization "
        "(folder ckpts/, MIT) at the commit pinned in data/kang2025_manifest.json, the arrays import-published reads, "
        "into OUT in the authors' layout; every file is checked against its sha256. A rerun resumes and skips "
        "what is whole. Then: premem.py import-published OUT RUNS.")
    fp.add_argument("out", type=Path, metavar="OUT")
    fp.add_argument("--tasks", nargs="+", choices=["gsm8k", "math"], default=["gsm8k", "math"],
                    help="13 GSM8K and 11 MATH runs (default both)")
    ns = fp.add_mutually_exclusive_group()
    ns.add_argument("--samples", type=cli.positive_int, default=5, metavar="N",
                    help="answer files with N samples per example (default %(default)s; elsewhere the most)")
    ns.add_argument("--all-samples", action="store_true", help="every answer file (133 MB in all)")
    fp.add_argument("--base-url", type=base_url_arg, metavar="URL",
                    help="another mirror of the repository at the pinned commit (http or https); user:password@ in "
                         "it is sent as HTTP basic auth to that host only, a ?query is kept on every file; both are "
                         "shown as *** in every message")
    fp.add_argument("--timeout", type=cli.positive_float, default=20.0, metavar="SECONDS",
                    help="give a file up when the server sends nothing for SECONDS (connecting, answering or "
                         "mid-file), retries included (default %(default)g)")


def base_url_arg(text: str) -> str:
    """--base-url checked while parsing (the message redacted); the download module loads only here."""
    from premem_kit.analysis.download import base_url_arg as check

    return check(text)


def add_threshold_args(p: argparse.ArgumentParser) -> None:
    """The threshold options of robustness and priors (calibration.run_threshold takes their values); none
    given: the task's fixed threshold (GSM8K -2.3, MATH -1.7), as the authors' Figures 5 and 7."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--calibrate", action="store_true",
                   help="calibrate the threshold on the runs given, as premem.py analyze (the kit's earlier default; "
                        "default: the task's, GSM8K -2.3, MATH -1.7)")
    g.add_argument("--threshold", "--threshold-loglog", dest="threshold", type=cli.finite_float, metavar="LOGLOG",
                   help="memorization threshold on log(log(perplexity)) (as premem.py analyze --threshold)")
    g.add_argument("--threshold-ppl", type=cli.perplexity_threshold, metavar="P",
                   help="memorization threshold on perplexity (> 1)")
    g.add_argument("--threshold-from", type=cli.existing_file, metavar="SUMMARY_JSON",
                   help="take threshold_loglog from a summary.json written by premem.py analyze")


def add_robustness(sub) -> None:
    p = sub.add_parser("robustness", help="PreMemAcc bins vs accuracy under perturbed prompts (Figures 6-7)",
                       description=ROBUSTNESS_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN", help="run folder with train records of every prompt variant")
    p.add_argument("--out", required=True, type=cli.out_folder, help="output folder")
    p.add_argument("--step", type=int, help="checkpoint step (default: the last with every variant)")
    add_threshold_args(p)
    p.add_argument("--bins", type=float, nargs="+", default=list(DEFAULT_BINS), metavar="EDGE",
                   help="PreMemAcc bin edges (default %(default)s, the authors'; the kit's earlier: "
                        + " ".join(f"{e:g}" for e in EARLIER_BINS) + " with --no-bin-for-one)")
    p.add_argument("--no-bin-for-one", action="store_true",
                   help="no bin of its own for PreMemAcc = 1: the last bin is closed [edge, 1] (default: a bin for 1, "
                        "as the authors)")
    p.add_argument("--examples", type=cli.nonnegative_int, default=DEFAULT_FIG6_EXAMPLES,
                   help="examples in fig6 (default %(default)s)")
    p.add_argument("--no-figures", action="store_true")


def add_priors(sub) -> None:
    p = sub.add_parser("priors", help="gradient variance, distance from init, ATC vs the generalization gap (Figure 5)",
                       description=PRIORS_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN", help="run folders (globs fine)")
    p.add_argument("--out", required=True, type=cli.out_folder, help="output folder")
    p.add_argument("--atc-reference", metavar="RUN",
                   help="run whose last checkpoint fits the ATC threshold (default: the run trained 3 epochs on the full "
                        "set at lr 2e-5, x10 for LoRA, the authors' reference; else the first)")
    p.add_argument("--atc-fit-on", choices=ATC_FIT_ON, default=ATC_FIT_ON[0],
                   help="the reference's split whose greedy scores fit the threshold to its test accuracy (default "
                        "%(default)s, the authors'; test: the kit's earlier fit)")
    p.add_argument("--atc-score", choices=ATC_SCORES, default=ATC_SCORES[0],
                   help="greedy response score: its whole log-probability (default %(default)s, the authors') or "
                        "its per-token mean (token-mean, the kit's earlier score)")
    add_threshold_args(p)
    p.add_argument("--grad-batches", type=int, default=DEFAULT_GRAD_BATCHES,
                   help="minibatches for the gradient variance (default %(default)s)")
    p.add_argument("--grad-batch-size", type=int, help="examples per minibatch (default: the run's batch_size)")
    p.add_argument("--grad-draw", choices=GRAD_DRAWS, default=GRAD_DRAWS[0],
                   help="minibatches: the first batches x B train examples in order (default %(default)s, the "
                        "authors') or seeded random draws (random, the kit's earlier rule)")
    p.add_argument("--grad-loss", choices=GRAD_LOSSES, default=GRAD_LOSSES[0],
                   help="minibatch loss: mean of per-example mean losses (default %(default)s, the authors') or the "
                        "mean over all target tokens (token, the kit's earlier rule)")
    p.add_argument("--seed", type=int, default=DEFAULT_GRAD_SEED,
                   help="seed of the minibatch draws with --grad-draw random (default %(default)s)")
    p.add_argument("--distance-all-weights", action="store_true",
                   help="distance from initialization over every weight (default: without the input embedding and "
                        "the output layer, as the authors)")
    p.add_argument("--no-grad-variance", action="store_true", help="skip the gradient variance (no model needed)")
    p.add_argument("--force", action="store_true", help="recompute cached per-checkpoint metrics")
    p.add_argument("--no-figures", action="store_true")


# ----------------------------------------------------------------------------- the commands


def analyze(a) -> None:
    from premem_kit.analysis.analyze import analyze as run_analyze
    from premem_kit.analysis.calibration import default_grid

    run_analyze(a.run_dirs, a.out, threshold_loglog=a.threshold, threshold_ppl=a.threshold_ppl,
                calibrate_on=a.calibrate_on, grid=default_grid(a.sweep_min, a.sweep_max, a.sweep_points),
                fragile_t=a.fragile_t, variant=a.variant, include_step0=a.include_step0,
                figures=not a.no_figures, fig3_run=a.fig3_run, all_checkpoints=a.all_checkpoints,
                bootstrap=a.bootstrap)


def fetch_published(a) -> None:
    from premem_kit.analysis.download import fetch

    r = fetch(a.out, tasks=a.tasks, samples=None if a.all_samples else a.samples, base_url=a.base_url,
              timeout=a.timeout)
    print(f"fetch-published: {r['files']} files ({r['bytes'] / 1e6:.1f} MB) in {r['out']}: downloaded "
          f"{r['downloaded']}, kept {r['kept']} (commit {r['commit'][:12]})\n"
          f"next: python premem.py import-published {r['out']} runs/published")


def import_published(a) -> None:
    from premem_kit.analysis.published import import_published as run_import

    run_import(a.src, a.out, model=a.model, force=a.force, samples=None if a.most_samples else a.samples)


def threshold_kwargs(a) -> dict:
    from premem_kit.analysis.calibration import threshold_from_summary

    _ = a.threshold_from is None or threshold_from_summary(a.threshold_from)  # not a summary: refused before work
    return dict(threshold_loglog=a.threshold, threshold_ppl=a.threshold_ppl, threshold_from=a.threshold_from,
                calibrate=a.calibrate)


def robustness(a) -> None:
    from premem_kit.analysis.robustness import run_robustness

    run_robustness(a.run_dir, a.out, step=a.step, **threshold_kwargs(a), edges=a.bins, bin_for_one=not a.no_bin_for_one,
                   n_examples=a.examples, figures=not a.no_figures)


def priors(a) -> None:
    from premem_kit.analysis.priors import run_priors

    run_priors(a.run_dirs, a.out, atc_reference=a.atc_reference, atc_fit_on=a.atc_fit_on, atc_score=a.atc_score,
               **threshold_kwargs(a), n_batches=a.grad_batches, batch_size=a.grad_batch_size, seed=a.seed,
               grad_draw=a.grad_draw, grad_loss=a.grad_loss, exclude_embeddings=not a.distance_all_weights,
               grad_variance=not a.no_grad_variance, force=a.force, figures=not a.no_figures)


COMMANDS = {"analyze": analyze, "fetch-published": fetch_published, "import-published": import_published, "robustness": robustness, "priors": priors}


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    return cli.run(f"premem.py {a.cmd}", COMMANDS[a.cmd], a)


if __name__ == "__main__":
    sys.exit(main())
