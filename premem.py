"""Pre-memorization train accuracy (PreMemAcc), Kang et al. (ICML 2025), "What Do Learning Dynamics
Reveal About Generalization in LLM Reasoning?": predict test accuracy from train-set learning dynamics.

    python premem.py analyze RUN_DIR... --out DIR [--threshold LOGLOG | --threshold-ppl P |
                                                   --calibrate-on RUN...] [--fragile-t 0.75]
    python premem.py fetch-published OUT_DIR [--tasks gsm8k math] [--samples 5 | --all-samples]
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
from premem_kit.analysis.defaults import (DEFAULT_BINS, DEFAULT_FIG6_EXAMPLES, DEFAULT_FRAGILE_T,
                                          DEFAULT_GRAD_BATCHES, DEFAULT_GRAD_SEED, DEFAULT_MODEL, DEFAULT_SWEEP)

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
    "only with --include-step0."
)

ROBUSTNESS_DOC = """Robustness of a train example's answer to a small change of the prompt (Kang et al., Figures 6-7).

    python premem.py robustness RUN --out DIR [--step N] [--threshold LOGLOG | --threshold-ppl P |
                                               --threshold-from SUMMARY_JSON] [--bins 0 0.25 0.5 0.75 1]

Needs the run's train records for the prompt variants (original, " First", " We know that" appended
after "Answer:"), which evaluate.py writes with

    python evaluate.py RUN --eval_splits train --eval_variants original first we_know_that

What it computes, at one checkpoint m (default: the last one with train records of every variant):
  * PreMemAcc[m, i] of every train example from the *original* records (only they carry the target
    perplexity), with the memorization threshold given or, by default, calibrated on this run as
    `premem.py analyze` does (prefer --threshold-from OUT/summary.json of an analyze over many runs);
  * examples binned by PreMemAcc: bin k = [edge_k, edge_k+1), the last bin closed [edge, 1];
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

    python premem.py priors RUN [RUN ...] --out DIR [--atc-reference RUN] [--threshold LOGLOG |
                            --threshold-ppl P | --threshold-from SUMMARY_JSON]
                            [--grad-batches 5] [--grad-batch-size B] [--seed 0] [--force]

Per checkpoint of every run (step 0, the base model, has no checkpoint and is left out):

gradient variance
    The gradient of the training loss (mean cross-entropy over the target tokens, as train.py) with
    respect to the trainable parameters (the LoRA A and B matrices; every weight when lora_r = 0) on
    --grad-batches (5) minibatches of --grad-batch-size (default: the run's batch_size) train examples,
    each a seeded random draw from the run's train set (the same draws at every checkpoint). The
    elementwise variance across the 5 gradients (population variance, i.e. divided by 5), averaged over
    all elements. Dropout is off (eval mode), so identical minibatches give exactly 0.
distance from initialization
    The sum over all weights of the squared change from the initial model. With LoRA the initial
    adapter is B = 0, so it is the squared Frobenius norm of the merged change, summed over adapted
    layers: sum ||s * B @ A||^2 with s = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA), computed
    from the r x r Gram matrices, ||BA||^2 = tr((B^T B)(A A^T)), straight from the adapter file (no base
    model, no full matrix). With lora_r = 0, the sum of squared differences to the base weights.
ATC (Average Thresholded Confidence)
    The score of an example is the likelihood of the model's greedy response (evaluate.py --greedy:
    RUN/greedy/step-XXXXXX.<split>.parquet, column likelihood). A threshold is fitted on one
    reference run (--atc-reference, default the first run; the paper uses the 3-epoch, lr 2e-5 run) at
    its last checkpoint with test greedy records: the fraction of its test examples whose score is above
    the threshold equals its test accuracy (the sampled accuracy of its test records). Every run's test
    accuracy at every checkpoint is then predicted as the fraction of its train examples whose score is
    above that threshold.

Figure 5 plots each metric against the true generalization gap, train accuracy - test accuracy (both
the mean sampled accuracy of the original-prompt records), over all runs and checkpoints, Pearson r in
each panel title. ATC and PreMemAcc predict test accuracy, so they enter as predicted gaps:
train accuracy - ATC prediction, and train accuracy - mean PreMemAcc (the threshold as in
`premem.py analyze`: given, or calibrated on the runs given here). Gradient variance and distance enter
as they are.

Per-checkpoint gradient variance and distance are cached in RUN/priors/step-XXXXXX.json (written
atomically, with the settings they were computed with); a rerun with the same settings skips them
(--no-grad-variance reuses any cached distance), --force recomputes. Outputs: DIR/priors.csv and
DIR/priors.json (points, Pearson r per metric, ATC threshold and reference), DIR/figures/fig5.{png,pdf}.
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
    an.add_argument("--out", required=True, type=Path, help="output folder")
    g = an.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, metavar="LOGLOG",
                   help="memorization threshold on log(log(perplexity)) (e.g. -2.5 = perplexity 1.0855)")
    g.add_argument("--threshold-ppl", type=float, metavar="P", help="memorization threshold on perplexity (> 1)")
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
    an.add_argument("--fig3-run", help="run shown in fig3 (default: the first run with the most checkpoints)")
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
    ns.add_argument("--samples", type=int, default=5, metavar="N",
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
    ns.add_argument("--samples", type=int, default=5, metavar="N",
                    help="answer files with N samples per example (default %(default)s; elsewhere the most)")
    ns.add_argument("--all-samples", action="store_true", help="every answer file (133 MB in all)")
    fp.add_argument("--base-url", help="another mirror of the repository at the pinned commit")


def add_threshold_args(p: argparse.ArgumentParser) -> None:
    """The threshold options of robustness and priors (calibration.run_threshold takes their values)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", "--threshold-loglog", dest="threshold", type=float, metavar="LOGLOG",
                   help="memorization threshold on log(log(perplexity)) (as premem.py analyze --threshold)")
    g.add_argument("--threshold-ppl", type=float, metavar="P", help="memorization threshold on perplexity")
    g.add_argument("--threshold-from", type=Path, metavar="SUMMARY_JSON",
                   help="take threshold_loglog from a summary.json written by premem.py analyze")


def add_robustness(sub) -> None:
    p = sub.add_parser("robustness", help="PreMemAcc bins vs accuracy under perturbed prompts (Figures 6-7)",
                       description=ROBUSTNESS_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN", help="run folder with train records of every prompt variant")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--step", type=int, help="checkpoint step (default: the last with every variant)")
    add_threshold_args(p)
    p.add_argument("--bins", type=float, nargs="+", default=list(DEFAULT_BINS), metavar="EDGE",
                   help="PreMemAcc bin edges (default %(default)s)")
    p.add_argument("--examples", type=int, default=DEFAULT_FIG6_EXAMPLES, help="examples in fig6 (default %(default)s)")
    p.add_argument("--no-figures", action="store_true")


def add_priors(sub) -> None:
    p = sub.add_parser("priors", help="gradient variance, distance from init, ATC vs the generalization gap (Figure 5)",
                       description=PRIORS_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN", help="run folders (globs fine)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--atc-reference", metavar="RUN", help="run whose test set fits the ATC threshold (default: the first)")
    add_threshold_args(p)
    p.add_argument("--grad-batches", type=int, default=DEFAULT_GRAD_BATCHES,
                   help="minibatches for the gradient variance (default %(default)s)")
    p.add_argument("--grad-batch-size", type=int, help="examples per minibatch (default: the run's batch_size)")
    p.add_argument("--seed", type=int, default=DEFAULT_GRAD_SEED, help="seed of the minibatch draws (default %(default)s)")
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
                figures=not a.no_figures, fig3_run=a.fig3_run)


def fetch_published(a) -> None:
    from premem_kit.analysis.download import fetch

    r = fetch(a.out, tasks=a.tasks, samples=None if a.all_samples else a.samples, base_url=a.base_url)
    print(f"fetch-published: {r['files']} files ({r['bytes'] / 1e6:.1f} MB) in {r['out']}: downloaded "
          f"{r['downloaded']}, kept {r['kept']} (commit {r['commit'][:12]})\n"
          f"next: python premem.py import-published {r['out']} runs/published")


def import_published(a) -> None:
    from premem_kit.analysis.published import import_published as run_import

    run_import(a.src, a.out, model=a.model, force=a.force, samples=None if a.most_samples else a.samples)


def threshold_kwargs(a) -> dict:
    return dict(threshold_loglog=a.threshold, threshold_ppl=a.threshold_ppl, threshold_from=a.threshold_from)


def robustness(a) -> None:
    from premem_kit.analysis.robustness import run_robustness

    run_robustness(a.run_dir, a.out, step=a.step, **threshold_kwargs(a), edges=a.bins, n_examples=a.examples,
                   figures=not a.no_figures)


def priors(a) -> None:
    from premem_kit.analysis.priors import run_priors

    run_priors(a.run_dirs, a.out, atc_reference=a.atc_reference, **threshold_kwargs(a), n_batches=a.grad_batches,
               batch_size=a.grad_batch_size, seed=a.seed, grad_variance=not a.no_grad_variance, force=a.force,
               figures=not a.no_figures)


COMMANDS = {"analyze": analyze, "fetch-published": fetch_published, "import-published": import_published, "robustness": robustness, "priors": priors}


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    return cli.run(f"premem.py {a.cmd}", COMMANDS[a.cmd], a)


if __name__ == "__main__":
    sys.exit(main())
