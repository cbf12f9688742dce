"""Training-data curation and data-scaling experiments.

    python curate.py rft --from RUN[:STEP] [--from RUN2[:STEP] ...] --out FILE.jsonl [--k 100]
                         [--temperature 0.7] [--top-p 1.0] [--max-new-tokens N] [--train-examples N]
                         [--questions run|split] [--batch-size B] [--samples-per-call S] [--seed 0]
                         [--cache-dir DIR] [--no-original] [--no-figures]
    python curate.py scaling CONFIG --fractions 1/32 1/16 1/8 1/4 1/2 1 [--out DIR] [key=value ...]

rft      Rejection-sampling finetuning data (Yuan et al. 2023): k samples per train question from each
         checkpoint, keep the correct ones whose <<expression=result>> arithmetic is right, one path per
         equation list (the most edit-distant one), plus the original solution; several --from are
         pooled before dedupe (their "U13B" union). Writes FILE.jsonl (GSM8K schema + provenance),
         FILE.report.json (distinct paths per question, pass@k) and FILE.report.{png,pdf}. Raw samples
         are cached per checkpoint (CACHE/<run>.step-<step>.T<temp>.p<top_p>.m<max_new>.s<seed>.jsonl,
         default CACHE = RUN/rft_samples): a rerun, a smaller k or another pooling samples nothing, a
         larger k only the missing samples; an interrupted run resumes after its last question batch.
scaling  SFT data scaling: one run per fraction of the train set (nested seeded subsets, config key
         subset_fraction; with max_train_examples N set, fractions of those N examples) under
         OUT/frac-<p>_<q>/ (OUT default: the config's run_dir), trained with train.py's run_training
         and evaluated on the test split with evaluate.py at the last checkpoint; fits
         accuracy = a * log2(n) + b and writes OUT/scaling.{json,png,pdf}. Finished runs and existing
         records are skipped.

select   P'(x) from a trained run: --strategy premem (PreMemAcc < --t), iid, ifd, heuristic (curation.py).
collect  N' new examples derived from a selection: --collector pool (--pool FILE.jsonl | holdout) or
         rephrase (OpenAI-compatible endpoint or local HF model; cached, retried, rate-limited).
algo1    Algorithm 1: --rounds n of train, evaluate, PreMemAcc, choose P', collect N'; OUT/round-K/.
fig8     Figure 8: algo1 per strategy (shared round 0), test accuracy vs examples, iid/premem ratio.
         See curation.py's docstring and `python curate.py COMMAND --help`.

Train on RFT data with train.py unchanged: train_file: FILE.jsonl, train_file_mode: replace (the file
already holds every original solution), e.g. configs/rft_demo.yaml, configs/recipes/rft_llama3_8b_gsm8k.yaml.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from pathlib import Path

import config as config_mod
import data as data_mod
import rft
from records import atomic_write_json

log = logging.getLogger("curate")


class CurateError(ValueError):
    pass


# ----------------------------------------------------------------------------- helpers


def run_config(run: Path) -> dict:
    """A run's config.yaml, checked and completed with defaults (as evaluate.py does)."""
    import records

    cfg = records.read_run_config(run)
    for k, v in cfg.items():
        config_mod.check_value(k, v, str(run / "config.yaml"))
    return {**{k: v[0] for k, v in config_mod.DEFAULTS.items()}, **cfg}


def parse_source(text: str) -> tuple[Path, int | None]:
    """RUN or RUN:STEP (STEP 0 = the untrained base model)."""
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and head:
        return Path(head), int(tail)
    return Path(text), None


def resolve_step(run: Path, step: int | None) -> tuple[int, Path | None]:
    """(step, checkpoint folder); default the last complete checkpoint; step 0 is the base model."""
    from train import complete_checkpoints

    ckpts = {int(p.name.split("-")[1]): p for p in complete_checkpoints(run)}
    if step == 0:
        return 0, None
    if step is None:
        if not ckpts:
            raise CurateError(f"{run}: no complete checkpoint (train it first, or use {run}:0 for the base model)")
        step = max(ckpts)
    if step not in ckpts:
        raise CurateError(f"{run}: no complete checkpoint-{step} (have: {sorted(ckpts) or 'none'})")
    return step, ckpts[step]


def rft_questions(sources: list[tuple[Path, dict]], mode: str = "run", n: int | None = None) -> list[dict]:
    """The train questions to sample: the runs' train examples (subset_ids.json, union in --from order,
    mapped back to their source question when a run trained on RFT/curated rows) or the whole train
    split (mode "split"); in the split's order; the first n."""
    cfg0 = sources[0][1]
    keys = ("task", "data", "data_config", "math_levels")
    for run, cfg in sources[1:]:
        diff = [k for k in keys if cfg[k] != cfg0[k]]
        if diff:
            raise CurateError(f"{run} uses other data than {sources[0][0]} ({', '.join(diff)} differ): "
                              f"pooled models must share task and data")
    split = data_mod.load_split(cfg0["task"], cfg0["data"], "train", cfg0["data_config"], cfg0["math_levels"])
    by_id = {e["id"]: e for e in split}
    order = {e["id"]: i for i, e in enumerate(split)}
    if mode == "split":
        exs = list(split)
    else:
        chosen: dict[str, dict] = {}
        for run, cfg in dict((str(r), (r, c)) for r, c in sources).values():
            ids_path = run / "subset_ids.json"
            if not ids_path.exists():
                raise CurateError(f"{ids_path} missing: train.py writes it when training starts")
            extra = {}
            if cfg["train_file"]:
                extra = {e["id"]: e for e in data_mod.load_extra_file(cfg["train_file"], cfg["task"])}
            for i in json.loads(ids_path.read_text()):
                e = extra.get(i) or by_id.get(i)
                if e is None:
                    raise data_mod.DataError(f"{ids_path}: id {i} is not in the data")
                sid = (e.get("meta") or {}).get("source_id") or e["id"]
                chosen.setdefault(sid, by_id.get(sid, e))
        exs = sorted(chosen.values(), key=lambda e: order.get(e["id"], len(order)))
    return exs[:n] if n else exs


def load_sampling_model(cfg: dict, folder: Path | None):
    """Tokenizer and model of a checkpoint (base + LoRA adapter, as evaluate.py), or the base model."""
    import torch

    import models

    tok = models.load_tokenizer(cfg["model"], cfg["tokenizer"])
    if folder is None:
        model = models.load_base_model(cfg)
    else:
        model = models.load_checkpoint(cfg, folder)
        if cfg["lora_r"] == 0 and torch.cuda.is_available():
            model.to("cuda")
    return tok, model.eval()


# ----------------------------------------------------------------------------- rft


def cmd_rft(a) -> int:
    import inference

    t0 = time.time()
    for name in ("k", "batch_size", "samples_per_call", "max_new_tokens", "train_examples"):
        v = getattr(a, name)
        if v is not None and v < 1:
            raise CurateError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if not a.temperature > 0 or not 0 < a.top_p <= 1:
        raise CurateError(f"--temperature must be > 0 and --top-p in (0, 1], got {a.temperature}, {a.top_p}")
    out = Path(a.out)
    base = out.with_suffix("") if out.suffix == ".jsonl" else out
    srcs = []
    for text in a.sources:
        run, step = parse_source(text)
        if not (run / "config.yaml").exists():
            raise CurateError(f"--from {text}: {run} is not a run folder (no config.yaml)")
        cfg = run_config(run)
        step, folder = resolve_step(run, step)
        srcs.append((run, cfg, step, folder))
    names = [f"{r.name}@{s}" for r, _, s, _ in srcs]
    if len(set(names)) != len(names):
        raise CurateError(f"the same checkpoint is given twice: {names}")
    task = srcs[0][1]["task"]
    examples = rft_questions([(r, c) for r, c, _, _ in srcs], a.questions, a.train_examples)
    log.info("%d questions x k=%d samples x %d checkpoint(s)", len(examples), a.k, len(srcs))

    sources, src_info = [], []
    for (run, cfg, step, folder), name in zip(srcs, names):
        max_new = a.max_new_tokens or cfg["eval_max_new_tokens"]
        meta = {"run": str(run), "step": step, "model": cfg["model"], "temperature": a.temperature,
                "top_p": a.top_p, "max_new_tokens": max_new, "seed": a.seed}
        cdir = Path(a.cache_dir) if a.cache_dir else run / "rft_samples"
        cache = rft.SampleCache(cdir / rft.cache_name(run.name, step, a.temperature, a.top_p, max_new, a.seed), meta)
        missing = sum(max(0, a.k - cache.count(e["id"])) for e in examples)
        new = 0
        if missing:
            log.info("%s: sampling %d completions (cache %s)", name, missing, cache.path)
            tok, model = load_sampling_model(cfg, folder)
            from tqdm.auto import tqdm

            bar = tqdm(total=missing, desc=f"{name} sampling", unit="sample", dynamic_ncols=True)
            ntok = [0]
            ts = time.time()

            def sample_fn(prompts, n, seed, model=model, tok=tok, max_new=max_new):
                outs, nt = inference.sample(model, tok, prompts, n=n, temperature=a.temperature, top_p=a.top_p,
                                            max_new_tokens=max_new, batch_size=len(prompts), seed=seed,
                                            progress=False)
                ntok[0] += nt
                bar.set_postfix(tok_s=f"{ntok[0] / max(time.time() - ts, 1e-9):.1f}")
                return outs

            new = rft.fill_cache(cache, examples, a.k, sample_fn, batch_size=a.batch_size or cfg["eval_batch_size"],
                                 samples_per_call=a.samples_per_call, seed=a.seed, progress=bar.update)
            bar.close()
            log.info("%s: %d samples, %d tokens in %.0f s", name, new, ntok[0], time.time() - ts)
            del model, tok
            gc.collect()
        else:
            log.info("%s: all samples cached (%s)", name, cache.path)
        sources.append(rft.Source(name, {e["id"]: cache.samples(e["id"]) for e in examples},
                                  {"model": cfg["model"], "run": str(run), "step": step}))
        src_info.append({"name": name, "run": str(run), "step": step, "model": cfg["model"],
                         "max_new_tokens": max_new, "cache": str(cache.path), "new_samples": new})

    rows, stats = rft.build_rft_rows(examples, sources, task, a.k, add_original=not a.no_original)
    rft.write_jsonl(out, rows)
    # the file must be one train.py accepts
    data_mod.load_extra_file(out, task)
    report = {"out": str(out), "task": task, "k": a.k, "questions_from": a.questions,
              "sampling": {"temperature": a.temperature, "top_p": a.top_p, "seed": a.seed},
              "sources": src_info, **stats, "seconds": round(time.time() - t0, 1)}
    rpath = Path(f"{base}.report.json")
    atomic_write_json(rpath, report)
    if not a.no_figures:
        plot_rft(report, Path(f"{base}.report"))
    d = stats["distinct_paths_per_question"]
    print(f"wrote {out}: {stats['rows']} rows for {stats['questions']} questions; distinct paths per question "
          f"{d['mean']:.2f} (sampled {d['mean_sampled_only']:.2f}); distribution {d['distribution']}")
    print("pass@k: " + "; ".join(f"{n}: " + ", ".join(f"@{k} {v:.3f}" for k, v in pk.items())
                                  for n, pk in stats["pass_at_k"].items()))
    print(f"report {rpath}")
    return 0


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rft(report: dict, base: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    for name, pk in report["pass_at_k"].items():
        ks = [int(k) for k in pk]
        ax[0].plot(ks, list(pk.values()), marker="o", label=name, ls="--" if name == "pooled" else "-")
    ax[0].set_xscale("log", base=2)
    ax[0].set_xlabel("k (samples per question)")
    ax[0].set_ylabel("pass@k (unbiased)")
    ax[0].set_ylim(-0.02, 1.02)
    ax[0].legend(fontsize=8)
    ax[0].set_title("pass@k on the train questions")
    dist = report["distinct_paths_per_question"]["distribution"]
    ax[1].bar([int(x) for x in dist], list(dist.values()), color="tab:blue")
    ax[1].set_xlabel("distinct reasoning paths (incl. original)" if report["distinct_paths_per_question"][
        "includes_original"] else "distinct reasoning paths")
    ax[1].set_ylabel("questions")
    ax[1].set_title(f"mean {report['distinct_paths_per_question']['mean']:.2f} paths / question")
    dk = report["distinct_paths_vs_k"]
    ax[2].plot([int(k) for k in dk], list(dk.values()), marker="o")
    ax[2].set_xscale("log", base=2)
    ax[2].set_xlabel(f"k per model ({len(report['sources'])} model(s) pooled)")
    ax[2].set_ylabel("mean distinct paths / question")
    ax[2].set_title("distinct paths vs k")
    fig.suptitle(f"RFT data: {report['questions']} questions, k={report['k']}, {report['rows']} rows")
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(f"{base}.{ext}", dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- scaling


def fraction_tag(f) -> str:
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}_{f.denominator}"


def cmd_scaling(a) -> int:
    import evaluate
    import train

    # "--fractions 1/32 1 key=value": the greedy --fractions list also catches the overrides
    fracs = [x for x in a.fractions if "=" not in x]
    overrides = [*(x for x in a.fractions if "=" in x), *a.overrides]
    cfg0 = config_mod.load_config(a.config, overrides)
    fs = sorted({config_mod.parse_fraction(x) for x in fracs})
    if not fs:
        raise CurateError("--fractions needs at least one fraction, e.g. 1/32 1/16 1")
    out = Path(a.out) if a.out else Path(cfg0["run_dir"])
    # The fractions are of the set CONFIG trains on. With a max_train_examples cap, fraction f trains on
    # the first int(N * f) of the N capped examples (max_train_examples = int(N * f)): a prefix of the
    # same seeded order, so the subsets stay nested; without a cap, subset_fraction = f.
    n_full = None
    if cfg0["max_train_examples"]:
        n_full = len(data_mod.train_examples({**cfg0, "subset_fraction": None}))
    points = []
    for f in fs:
        cfg = dict(cfg0)
        if n_full is None:
            cfg["subset_fraction"] = str(f)
        else:
            cfg["subset_fraction"] = None
            cfg["max_train_examples"] = max(1, int(n_full * f))
        cfg["run_dir"] = str(out / f"frac-{fraction_tag(f)}")
        config_mod.validate(cfg)
        run = Path(cfg["run_dir"])
        log.info("fraction %s: %s", f, run)
        summary = train.run_training(cfg)
        gc.collect()
        ckpts = train.complete_checkpoints(run)
        if not ckpts:
            raise CurateError(f"{run}: training wrote no checkpoint")
        last = int(ckpts[-1].name.split("-")[1])
        rows = evaluate.run_evaluation(run, ["--splits", "test", "--no-base", "--steps", str(last)])
        gc.collect()
        row = next(r for r in rows if r["split"] == "test" and r["variant"] == "original" and r["step"] == last)
        n = len(json.loads((run / "subset_ids.json").read_text()))
        points.append({"fraction": str(f), "fraction_value": float(f), "n_train": n, "run_dir": str(run),
                       "step": last, "epoch": row["epoch"], "test_accuracy": row["accuracy"],
                       "test_examples": row["n"], "train_seconds": summary.get("seconds_this_session")})
        log.info("fraction %s: n=%d test accuracy %.4f", f, n, row["accuracy"])
    ns = [p["n_train"] for p in points]
    if len(set(ns)) < len(ns):
        log.warning("some fractions train on the same number of examples (%s): too few train examples "
                    "for these fractions", ns)
    fit = None
    if len(set(ns)) >= 2:
        fit = rft.fit_log_linear([p["n_train"] for p in points], [p["test_accuracy"] for p in points])
    res = {"config": str(a.config), "overrides": overrides, "out": str(out), "points": points, "fit": fit,
           "model": "test_accuracy = a * log2(n_train) + b (least squares); a = change per doubling",
           "eval": {k: cfg0[k] for k in ("eval_samples", "eval_temperature", "eval_top_p",
                                         "eval_max_new_tokens", "eval_test_examples")}}
    atomic_write_json(out / "scaling.json", res)
    if not a.no_figures:
        plot_scaling(res, out / "scaling")
    for p in points:
        print(f"fraction {p['fraction']:>6} n={p['n_train']:>6} test accuracy {p['test_accuracy']:.4f}")
    if fit:
        print(f"fit: accuracy = {fit['a']:.4f} * log2(n) + {fit['b']:.4f}  "
              f"(slope per doubling {fit['slope_per_doubling']:+.4f}, R^2 {fit['r2']})")
    print(f"wrote {out / 'scaling.json'}")
    return 0


def plot_scaling(res: dict, base: Path) -> None:
    import numpy as np

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ns = [p["n_train"] for p in res["points"]]
    ax.plot(ns, [p["test_accuracy"] for p in res["points"]], "o", label="runs")
    if res["fit"]:
        x = np.linspace(min(ns), max(ns), 100)
        f = res["fit"]
        ax.plot(x, f["a"] * np.log2(x) + f["b"], "-",
                label=f"{f['a']:+.4f} log2(n) {f['b']:+.4f}")
        ax.set_title(f"slope {f['slope_per_doubling']:+.4f} accuracy per doubling")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("train examples n")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(f"{base}.{ext}", dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI


def add_rft_parser(sub):
    p = sub.add_parser("rft", help="rejection-sampling finetuning data from trained checkpoints",
                       description=rft.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="sources", action="append", required=True, metavar="RUN[:STEP]",
                   help="run folder, optionally :STEP (default its last complete checkpoint; :0 the base "
                        "model); repeat to pool several models' samples")
    p.add_argument("--out", required=True, help="output JSONL (GSM8K schema + provenance)")
    p.add_argument("--k", type=int, default=100, help="samples per question per checkpoint (default %(default)s)")
    p.add_argument("--temperature", type=float, default=0.7, help="(default %(default)s, as Yuan et al.)")
    p.add_argument("--top-p", type=float, default=1.0, help="(default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, help="(default: the run's eval_max_new_tokens)")
    p.add_argument("--questions", choices=("run", "split"), default="run",
                   help="run: the runs' train examples (subset_ids.json); split: the whole train split")
    p.add_argument("--train-examples", type=int, metavar="N", help="only the first N questions (split order)")
    p.add_argument("--batch-size", type=int, help="prompts per generate call (default: eval_batch_size)")
    p.add_argument("--samples-per-call", type=int,
                   help="samples per prompt per generate call (default k; lower it when k x batch is too big)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (part of the cache file name)")
    p.add_argument("--cache-dir", help="sample cache folder (default RUN/rft_samples)")
    p.add_argument("--no-original", action="store_true", help="do not add the original solutions")
    p.add_argument("--no-figures", action="store_true")
    return p


def add_scaling_parser(sub):
    p = sub.add_parser("scaling", help="SFT data scaling: one run per train-set fraction, log-linear fit",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Trains CONFIG on nested seeded fractions of its train set "
                       "(subset_fraction; of the first max_train_examples when that is set), evaluates "
                       "each run's last checkpoint on the test split "
                       "(--splits test --no-base) and fits test accuracy = a * log2(n) + b.")
    p.add_argument("config", help="YAML train config")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    p.add_argument("--fractions", nargs="+", required=True, help="e.g. 1/32 1/16 1/8 1/4 1/2 1")
    p.add_argument("--out", help="parent folder of the runs (default: the config's run_dir)")
    p.add_argument("--no-figures", action="store_true")
    return p


# name -> (add parser, run). Further curation commands (Algorithm 1) register here.
SUBCOMMANDS = {
    "rft": (add_rft_parser, cmd_rft),
    "scaling": (add_scaling_parser, cmd_scaling),
}
import curation  # noqa: E402  Algorithm 1: select, collect, algo1, fig8 (curation.py)

SUBCOMMANDS.update(curation.SUBCOMMANDS)


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
    # scaling: key=value overrides may also follow the options (argparse gives them back as extras)
    if extra and a.cmd == "scaling" and all("=" in x and not x.startswith("-") for x in extra):
        a.overrides, extra = [*a.overrides, *extra], []
    if extra:
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import models

    try:
        return SUBCOMMANDS[a.cmd][1](a)
    except (CurateError, config_mod.ConfigError, data_mod.DataError, rft.CacheError, models.ModelError,
            FileNotFoundError) as e:
        print(f"curate.py {a.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
