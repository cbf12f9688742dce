"""Training-data curation and data-scaling experiments.

    python curate.py rft --from RUN[:STEP] [--from RUN2[:STEP] ...] --out FILE.jsonl [--k 100]
                         [--temperature 0.7] [--top-p 1.0] [--top-k 50] [--max-new-tokens 256] [--train-examples N]
                         [--questions run|split] [--batch-size B] [--samples-per-call S] [--seed 0]
                         [--cache-dir DIR] [--no-original] [--no-figures]
                         [--dedupe reference|strict] [--arith-check reference|rounding|exact]
    python curate.py scaling CONFIG --fractions 1/32 1/16 1/8 1/4 1/2 1 [--out DIR] [--sampled]
                             [key=value ...]

rft      Rejection-sampling finetuning data (Yuan et al. 2023): k samples per train question from each
         checkpoint, keep the correct ones whose <<expression=result>> arithmetic is right (Yuan et al.'s
         check by default), one path per equation list (the most edit-distant one; by Yuan et al.'s rule
         a sample with the original's equations is an extra path), plus the original solution; several
         --from are pooled before dedupe (their "U13B" union). Sampling as Yuan et al.'s sampler:
         temperature 0.7, top-k 50, top-p 1.0, 256 new tokens. Writes FILE.jsonl (GSM8K schema + provenance),
         FILE.report.json (distinct paths per question, pass@k) and FILE.report.{png,pdf}. Raw samples
         are cached per checkpoint (CACHE/<run>.step-<step>.T<temp>.p<top_p>.k<top_k>.m<max_new>.s<seed>.jsonl,
         default CACHE = RUN/rft_samples): a rerun, a smaller k or another pooling samples nothing, a
         larger k only the missing samples; an interrupted run resumes after its last question batch.
scaling  SFT data scaling: one run per fraction of the train set (nested seeded subsets, config key
         subset_fraction; with max_train_examples N set, fractions of those N examples) under
         OUT/frac-<p>_<q>/ (OUT default: the config's run_dir), trained as train.py trains and
         evaluated on the test split at the last checkpoint (greedy accuracy, as Yuan et al.; --sampled:
         the sampled accuracy of the eval_* settings); fits accuracy = a * log2(n) + b and
         writes OUT/scaling.{json,png,pdf}. Finished runs and existing records are skipped.

select   P'(x) from a trained run's original train examples (D_train): --strategy premem (PreMemAcc < --t,
         memorization threshold the task's in the authors' curation: GSM8K -2.4, MATH -1.7), iid, ifd, heuristic.
collect  N' new examples derived from a selection: --collector pool (--pool FILE.jsonl | holdout) or
         rephrase (OpenAI-compatible endpoint or local HF model; cached, retried, rate-limited).
algo1    Algorithm 1: --rounds n of train, evaluate, PreMemAcc, choose P', collect N'; OUT/round-K/.
fig8     Figure 8: algo1 per strategy (shared round 0), test accuracy vs examples, iid/premem ratio.
         See `python curate.py COMMAND --help`.

Train on RFT data with train.py unchanged: train_file: FILE.jsonl, train_file_mode: replace (the file
already holds every original solution), e.g. configs/rft_demo.yaml, configs/recipes/rft_llama3_8b_gsm8k.yaml.
The library behind it: premem_kit/curation/rft_sampling.py (rft), scaling.py, selection.py, algorithm1.py, fig8.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from premem_kit.core import cli
from premem_kit.core import overrides
from premem_kit.core.config import FIELDS, load_config
from premem_kit.curation.vocabulary import (COLLECTORS, DEFAULT_T, MEM_THRESHOLD_HELP, SELECT_FROM, STRATEGIES,
                                           strategy_mismatch)

# ----------------------------------------------------------------------------- rft and scaling


def cmd_rft(a) -> int:
    from premem_kit.curation.rft_sampling import RftOptions, make_rft_data

    report, rpath = make_rft_data(RftOptions(
        sources=a.sources, out=a.out, k=a.k, temperature=a.temperature, top_p=a.top_p, top_k=a.top_k,
        max_new_tokens=a.max_new_tokens, questions=a.questions, train_examples=a.train_examples,
        batch_size=a.batch_size, samples_per_call=a.samples_per_call, seed=a.seed, cache_dir=a.cache_dir,
        original=not a.no_original, figures=not a.no_figures, dedupe=a.dedupe, arith_check=a.arith_check))
    d = report["distinct_paths_per_question"]
    print(f"wrote {a.out}: {report['rows']} rows for {report['questions']} questions; distinct paths per question "
          f"{d['mean']:.2f} (sampled {d['mean_sampled_only']:.2f}); distribution {d['distribution']}")
    print("pass@k: " + "; ".join(f"{n}: " + ", ".join(f"@{k} {v:.3f}" for k, v in pk.items())
                                  for n, pk in report["pass_at_k"].items()))
    print(f"report {rpath}")
    return 0


def cmd_scaling(a) -> int:
    from premem_kit.curation.scaling import run_scaling

    # "--fractions 1/32 1 key=value": the greedy --fractions list also catches the overrides
    settings = overrides.collect(a, a.overrides, FIELDS)
    res = run_scaling(a.config, settings, a.fractions, a.out, draw=not a.no_figures, greedy=not a.sampled)
    for p in res["points"]:
        print(f"fraction {p['fraction']:>6} n={p['n_train']:>6} {res['accuracy']} test accuracy "
              f"{p['test_accuracy']:.4f}")
    fit = res["fit"]
    if fit:
        print(f"fit: accuracy = {fit['a']:.4f} * log2(n) + {fit['b']:.4f}  "
              f"(slope per doubling {fit['slope_per_doubling']:+.4f}, R^2 {fit['r2']})")
    print(f"wrote {Path(res['out']) / 'scaling.json'}")
    return 0


# ----------------------------------------------------------------------------- Algorithm 1 and Figure 8


def collect_options(a):
    from premem_kit.curation.collectors import CollectOptions

    names = ("collector", "pool", "pool_size", "rephrase_model", "rephrase_hf", "rpm", "max_retries",
             "rephrase_temperature")
    return CollectOptions(**{k: getattr(a, k) for k in names})


def loop_options(a):
    from premem_kit.curation.algorithm1 import LoopOptions

    return LoopOptions(n_new=a.n_new, rounds=a.rounds, t=a.t, mem_threshold=a.mem_threshold,
                       threshold_from=a.threshold_from, fraction=a.fraction, select_from=a.select_from,
                       ifd_scorer=a.ifd_scorer, ifd_scorer_examples=a.ifd_scorer_examples,
                       collect=collect_options(a))


def cmd_select(a) -> int:
    from premem_kit.curation.selection import select_run

    sel = select_run(a.run, a.strategy, a.out, t=a.t, mem_threshold=a.mem_threshold,
                     threshold_from=a.threshold_from, fraction=a.fraction, ifd_scorer=a.ifd_scorer,
                     select_from=a.select_from)
    print(f"{a.strategy}: P'(x) = {len(sel['selected'])} of {sel['n_examples']} train examples "
          f"({len(sel['sources'])} sources); wrote {a.out}")
    return 0


def cmd_collect(a) -> int:
    from premem_kit.curation.algorithm1 import collect_for_selection

    rows, st = collect_for_selection(a.selection, a.n, a.out, collect_options(a), exclude=a.exclude,
                                     cache=a.cache, seed=a.seed)
    print(f"collected {len(rows)} of {a.n} ({json.dumps(st)}); wrote {a.out}")
    return 0


def cmd_algo1(a) -> int:
    from premem_kit.curation.algorithm1 import run_algo1

    s = run_algo1(load_config(a.config, overrides.collect(a, a.overrides, FIELDS)), a.out, a.strategy,
                  loop_options(a))
    for r in s["rounds"]:
        print(f"round {r['round']}: n_train {r['n_train']:>6}  test accuracy {r['test_accuracy']:.4f}"
              + (f"  P' {r['selected']}  collected {r['collected']}" if "collected" in r else ""))
    print(f"wrote {Path(a.out) / 'summary.json'} and {s['curated']}")
    return 0


def cmd_fig8(a) -> int:
    from premem_kit.curation.fig8 import run_fig8_command

    res = run_fig8_command(load_config(a.config, overrides.collect(a, a.overrides, FIELDS)), a.out, a.strategies,
                           loop_options(a), draw=not a.no_figures)
    for s, pts in res["curves"].items():
        print(f"{s:>9}: " + "  ".join(f"n={p['n_train']} acc={p['test_accuracy']:.4f}" for p in pts))
    r = res["sample_efficiency_ratio"]
    if r:
        print(f"sample-efficiency ratio (iid examples / premem examples, same test accuracy): at premem's final "
              f"accuracy {r['at_final']}, geometric mean over levels {r['geomean']}"
              + (f" ({r['note']})" if r.get("note") else ""))
    print(f"wrote {Path(a.out) / 'fig8.json'}" + ("" if a.no_figures else f" and {Path(a.out) / 'fig8'}.{{png,pdf}}"))
    return 0


# ----------------------------------------------------------------------------- parser


def add_rft_parser(sub):
    from premem_kit.curation import rft
    from premem_kit.tasks.arith import ARITH_CHECKS, DEFAULT_ARITH_CHECK

    p = sub.add_parser("rft", help="rejection-sampling finetuning data from trained checkpoints",
                       description=rft.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="sources", action="append", required=True, metavar="RUN[:STEP]",
                   help="run folder, optionally :STEP (default its last complete checkpoint; :0 the base "
                        "model); repeat to pool several models' samples")
    p.add_argument("--out", required=True, help="output JSONL (GSM8K schema + provenance)")
    p.add_argument("--k", type=cli.positive_int, default=100, help="samples per question per checkpoint (default %(default)s)")
    p.add_argument("--temperature", type=cli.positive_float, default=0.7, help="(default %(default)s, as Yuan et al.)")
    p.add_argument("--top-p", type=cli.unit_float, default=1.0, help="(default %(default)s, as Yuan et al.)")
    p.add_argument("--top-k", type=int, default=50,
                   help="(default %(default)s, Hugging Face generate's default as Yuan et al.'s sampler; 0: off, "
                        "the kit's earlier sampler)")
    p.add_argument("--max-new-tokens", type=cli.positive_int, default=256,
                   help="(default %(default)s, as Yuan et al.; the kit's earlier default was the run's "
                        "eval_max_new_tokens)")
    p.add_argument("--questions", choices=("run", "split"), default="run",
                   help="run: the runs' train examples (subset_ids.json); split: the whole train split")
    p.add_argument("--train-examples", type=cli.positive_int, metavar="N", help="only the first N questions (split order)")
    p.add_argument("--batch-size", type=cli.positive_int, help="prompts per generate call (default: eval_batch_size)")
    p.add_argument("--samples-per-call", type=cli.positive_int,
                   help="samples per prompt per generate call (default k; lower it when k x batch is too big)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (part of the cache file name)")
    p.add_argument("--cache-dir", help="sample cache folder (default RUN/rft_samples)")
    p.add_argument("--no-original", action="store_true", help="do not add the original solutions")
    p.add_argument("--dedupe", choices=rft.DEDUPE_RULES, default=rft.DEFAULT_DEDUPE,
                   help="reference (default, Yuan et al.'s code): a sample with the original's equations is kept "
                        "as an extra path; strict (the kit's earlier rule): it is dropped")
    p.add_argument("--arith-check", choices=ARITH_CHECKS, default=DEFAULT_ARITH_CHECK,
                   help="reference (default, Yuan et al.'s code): |value - shown| < 1e-3 on the first two sides; "
                        "rounding (the kit's earlier rule): relative 1e-4 or rounds to the shown digits; "
                        "exact: every side equals the value")
    p.add_argument("--no-figures", action="store_true")
    return p


def add_scaling_parser(sub):
    p = sub.add_parser("scaling", help="SFT data scaling: one run per train-set fraction, log-linear fit",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Trains CONFIG on nested seeded fractions of its train set "
                       "(subset_fraction; of the first max_train_examples when that is set), evaluates "
                       "each run's last checkpoint on the test split (greedy, as Yuan et al. report; "
                       "--sampled: eval_samples samples at eval_temperature, the kit's earlier measure) "
                       "and fits test accuracy = a * log2(n) + b.")
    p.add_argument("config", help="YAML train config")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    overrides.add_setting_options(p, FIELDS)
    p.add_argument("--fractions", nargs="+", required=True, help="e.g. 1/32 1/16 1/8 1/4 1/2 1")
    p.add_argument("--out", help="parent folder of the runs (default: the config's run_dir)")
    p.add_argument("--sampled", action="store_true",
                   help="report the sampled test accuracy (eval_samples at eval_temperature) instead of the "
                        "greedy one (the default, as Yuan et al.)")
    p.add_argument("--no-figures", action="store_true")
    return p


def _add_selection_opts(p):
    p.add_argument("--t", type=cli.unit_float, help=f"premem: PreMemAcc cut (default {DEFAULT_T})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mem-threshold", type=cli.finite_float, metavar="LOGLOG", help=MEM_THRESHOLD_HELP)
    g.add_argument("--threshold-from", metavar="SUMMARY_JSON",
                   help="premem: take threshold_loglog from the summary.json of a premem.py analyze run")
    p.add_argument("--fraction", type=cli.unit_float,
                   help="ifd/heuristic: top fraction kept (default 0.5 GSM8K, 0.75 MATH)")
    p.add_argument("--select-from", choices=SELECT_FROM, default="original",
                   help="original (default, Algorithm 1 line 6): choose P'(x) among D_train, the original train "
                        "examples; all: also among the curated rows the run trained on (the kit's earlier rule)")


def _add_collect_opts(p):
    p.add_argument("--collector", choices=COLLECTORS, default="pool")
    p.add_argument("--pool", help="candidate JSONL (source_id or source_question per row) or 'holdout': "
                                  "the train split minus the seed set, sources by nearest seed question")
    p.add_argument("--pool-size", type=cli.positive_int, help="holdout pool: a seeded sample of N held-out examples")
    p.add_argument("--rephrase-model", help="chat model name (or CURATE_REPHRASE_MODEL); endpoint "
                                            "OPENAI_BASE_URL, key OPENAI_API_KEY")
    p.add_argument("--rephrase-hf", help="rephrase with this local HF model instead of an endpoint")
    p.add_argument("--rpm", type=cli.positive_float, default=60, help="requests per minute at most (default %(default)s)")
    p.add_argument("--max-retries", type=int, default=5)
    p.add_argument("--rephrase-temperature", type=float, default=0.7)


def add_select_parser(sub):
    p = sub.add_parser("select", help="choose P'(x) from a trained run (premem, iid, ifd, heuristic)")
    p.add_argument("run", help="run folder with train records (evaluate.py)")
    p.add_argument("--strategy", choices=STRATEGIES, required=True)
    p.add_argument("--ifd-scorer", metavar="RUN", help="ifd: run trained on disjoint data (e.g. the test split)")
    p.add_argument("--out", required=True, help="selection JSON")
    _add_selection_opts(p)
    return p


def add_collect_parser(sub):
    p = sub.add_parser("collect", help="collect N' new examples derived from a selection (pool or rephrase)")
    p.add_argument("--selection", required=True, help="JSON from curate.py select")
    p.add_argument("--n", type=cli.positive_int, required=True, help="number of new examples N'")
    p.add_argument("--out", required=True, help="output JSONL (dataset schema + provenance)")
    p.add_argument("--exclude", help="JSONL of earlier collected rows never to draw again")
    p.add_argument("--cache", help="rephrase response cache (default OUT.cache.jsonl)")
    p.add_argument("--seed", type=int, default=0)
    _add_collect_opts(p)
    return p


def _add_loop_opts(p):
    p.add_argument("config", help="YAML train config (the recipe; its subset / max_train_examples give D_train)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    overrides.add_setting_options(p, FIELDS)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--rounds", type=cli.positive_int, default=5, help="rounds n (paper 5; default %(default)s)")
    p.add_argument("--n-new", nargs="+", required=True,
                   help="N'_i per round (one value or n): a count, or a multiple of the seed set such as 2x "
                        "(the authors' five-round MATH schedule: 1x 2x 4x 4x 2x)")
    p.add_argument("--ifd-scorer", metavar="RUN", help="ifd: existing scorer run (default: train one on "
                                                       "the test split for 2 epochs in OUT/ifd-scorer)")
    p.add_argument("--ifd-scorer-examples", type=cli.positive_int, metavar="N",
                   help="train the IFD scorer on the first N test examples only (default: all)")
    _add_selection_opts(p)
    _add_collect_opts(p)


def add_algo1_parser(sub):
    p = sub.add_parser("algo1", help="Algorithm 1: n rounds of train, evaluate, PreMemAcc, choose, collect")
    _add_loop_opts(p)
    p.add_argument("--strategy", choices=STRATEGIES, default="premem")
    return p


def add_fig8_parser(sub):
    p = sub.add_parser("fig8", help="Figure 8: Algorithm 1 per strategy, test accuracy vs examples, ratio")
    _add_loop_opts(p)
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--no-figures", action="store_true")
    return p


SUBCOMMANDS = {
    "rft": (add_rft_parser, cmd_rft),
    "scaling": (add_scaling_parser, cmd_scaling),
    "select": (add_select_parser, cmd_select),
    "collect": (add_collect_parser, cmd_collect),
    "algo1": (add_algo1_parser, cmd_algo1),
    "fig8": (add_fig8_parser, cmd_fig8),
}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="curate.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for add, _ in SUBCOMMANDS.values():
        add(sub)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    a, extra = ap.parse_known_args(argv)
    if hasattr(a, "overrides"):
        # key=value overrides may follow the options: argparse gives them back as extras, or a list option
        # before them (--fractions 1/2 1 key=value, --n-new 1 key=value) takes them in
        for opt in ("fractions", "n_new"):
            words = getattr(a, opt, None) or []
            a.overrides += [w for w in words if "=" in w]
            if words:
                setattr(a, opt, [w for w in words if "=" not in w])
        if extra and all("=" in x and not x.startswith("-") for x in extra):
            a.overrides, extra = [*a.overrides, *extra], []
    if extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if a.cmd in ("select", "algo1") and strategy_mismatch(a.strategy, a.t, a.mem_threshold, a.threshold_from, a.fraction):
        ap.error(strategy_mismatch(a.strategy, a.t, a.mem_threshold, a.threshold_from, a.fraction))
    if hasattr(a, "t") and a.t is None:
        a.t = DEFAULT_T
    cli.setup()
    return cli.run(f"curate.py {a.cmd}", SUBCOMMANDS[a.cmd][1], a)


if __name__ == "__main__":
    sys.exit(main())
