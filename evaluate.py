"""Evaluate every checkpoint of a run: n samples per prompt and the target perplexity, per example.

    python evaluate.py RUN_DIR [--splits train test] [--variants original first we_know_that]
                               [--samples 5] [--train-examples N] [--test-examples N] [--greedy] [--force]
    accelerate launch --num_processes 2 evaluate.py RUN_DIR ...     # shards prompts across processes

Defaults come from the run's config.yaml (eval_* keys); flags override them. Writes one Parquet file per
checkpoint x split x variant to RUN/records/ (schema in records.py and the README), skipping files that
exist (--force redoes them). Step 0 is the untrained base model (--no-base skips it).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import config as config_mod
import data as data_mod
import grading
import inference
import records
from records import VARIANTS, record_path

log = logging.getLogger("evaluate")


def checkpoint_steps(run: Path) -> list[tuple[int, float, Path]]:
    """(step, epoch, folder) of every complete checkpoint."""
    from train import complete_checkpoints

    out = []
    for p in complete_checkpoints(run):
        step = int(p.name.split("-")[1])
        epoch = json.loads((p / ".complete").read_text()).get("epoch") or 0.0
        out.append((step, float(epoch), p))
    return out


def eval_examples(cfg: dict, run: Path, split: str, n=None) -> list[dict]:
    """The examples evaluated for a split: the run's train ids (or a seeded fixed subsample), or the
    first n test examples. The same at every checkpoint."""
    if split == "train":
        ids_path = run / "subset_ids.json"
        if not ids_path.exists():
            raise FileNotFoundError(f"{ids_path} missing: train.py writes it when training starts")
        ids = json.loads(ids_path.read_text())
        pool = data_mod.load_split(cfg["task"], cfg["data"], "train", cfg["data_config"], cfg["math_levels"])
        if cfg["train_file"]:
            pool += data_mod.load_extra_file(cfg["train_file"], cfg["task"])
        by_id = {e["id"]: e for e in pool}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise data_mod.DataError(f"{ids_path}: {len(missing)} ids not in the data (first: {missing[0]})")
        ids = data_mod.sample_ids(ids, n, cfg["seed"])
        return [by_id[i] for i in ids]
    exs = data_mod.load_split(cfg["task"], cfg["data"], "test", cfg["data_config"], cfg["math_levels"])
    return exs[:n] if n else exs


def evaluate_split(model, tok, cfg, examples, split, variant, step, epoch, opts, state=None) -> list[dict]:
    """Record rows for one checkpoint x split x variant. With several processes, each samples a shard
    and the rows are gathered on every process."""
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    mine = examples[rank::world]
    suffix = VARIANTS[variant]
    prompts = [data_mod.make_prompt(e["question"], suffix) for e in mine]
    t0 = time.time()
    comps, ntok = inference.sample(
        model, tok, prompts, n=opts.samples, temperature=opts.temperature, top_p=opts.top_p,
        max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size, seed=opts.seed + rank,
        desc=f"step {step} {split}/{variant} sampling", progress=rank == 0)
    dt = time.time() - t0
    if rank == 0:
        log.info("step %d %s/%s: %d prompts x %d samples, %.2f prompts/s, %.1f generated tokens/s",
                 step, split, variant, len(prompts) * world, opts.samples, len(prompts) / dt, ntok / dt)
    if split == "train" and variant == "original":
        ppl, nt = inference.perplexities(model, tok, [e["prompt"] for e in mine], [e["target"] for e in mine],
                                         batch_size=opts.ppl_batch_size, max_length=cfg["max_length"],
                                         desc=f"step {step} {split} perplexity", progress=rank == 0)
    else:
        ppl, nt = [math.nan] * len(mine), [len(tok(e["target"], add_special_tokens=False)["input_ids"]) for e in mine]
    rows = []
    for e, c, p, n in zip(mine, comps, ppl, nt):
        graded = [grading.grade(cfg["task"], s, e["reference"]) for s in c]
        outcomes = [g[1] for g in graded]
        rows.append({"id": e["id"], "step": step, "epoch": epoch, "split": split, "variant": variant,
                     "samples": c, "answers": [g[0] for g in graded], "outcomes": outcomes,
                     "accuracy": sum(o == "correct" for o in outcomes) / len(outcomes),
                     "perplexity": p, "target_tokens": n})
    if world > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    order = {e["id"]: i for i, e in enumerate(examples)}
    return sorted(rows, key=lambda r: order[r["id"]])


def greedy_path(run, step, split):
    return Path(run) / "records" / f"greedy-step-{int(step):06d}.{split}.parquet"


def greedy_split(model, tok, cfg, examples, split, step, opts, state=None):
    rank, world = (state.process_index, state.num_processes) if state else (0, 1)
    mine = examples[rank::world]
    texts, lik, nt = inference.greedy_with_likelihood(
        model, tok, [e["prompt"] for e in mine], max_new_tokens=opts.max_new_tokens,
        batch_size=opts.batch_size, progress=rank == 0)
    rows = []
    for e, t, l, n in zip(mine, texts, lik, nt):
        ans, outcome = grading.grade(cfg["task"], t, e["reference"])
        rows.append({"id": e["id"], "step": step, "split": split, "text": t, "answer": ans, "outcome": outcome,
                     "likelihood": l, "tokens": n})
    if world > 1:
        from accelerate.utils import gather_object

        rows = gather_object(rows)
    order = {e["id"]: i for i, e in enumerate(examples)}
    return sorted(rows, key=lambda r: order[r["id"]])


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--splits", nargs="+", choices=records.SPLITS)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS))
    ap.add_argument("--samples", type=int, help="samples per prompt (config eval_samples; paper 5)")
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--top-p", type=float)
    ap.add_argument("--max-new-tokens", type=int)
    ap.add_argument("--batch-size", type=int, help="prompts per generate call (halves on CUDA OOM)")
    ap.add_argument("--ppl-batch-size", type=int)
    ap.add_argument("--train-examples", type=int, help="seeded fixed subsample of N train ids")
    ap.add_argument("--test-examples", type=int, help="first N test examples")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--steps", type=int, nargs="+", help="only these checkpoint steps")
    ap.add_argument("--no-base", action="store_true", help="skip the untrained base model (step 0)")
    ap.add_argument("--greedy", action="store_true", help="also the greedy answer and its likelihood (ATC)")
    ap.add_argument("--force", action="store_true", help="redo records that exist")
    return ap.parse_args(argv)


def resolve_opts(a, cfg):
    pick = lambda v, k: v if v is not None else cfg[k]  # noqa: E731
    a.splits = a.splits or cfg["eval_splits"]
    a.variants = a.variants or cfg["eval_variants"]
    a.samples = pick(a.samples, "eval_samples")
    a.temperature = pick(a.temperature, "eval_temperature")
    a.top_p = pick(a.top_p, "eval_top_p")
    a.max_new_tokens = pick(a.max_new_tokens, "eval_max_new_tokens")
    a.batch_size = pick(a.batch_size, "eval_batch_size")
    a.ppl_batch_size = pick(a.ppl_batch_size, "eval_ppl_batch_size")
    a.train_examples = pick(a.train_examples, "eval_train_examples")
    a.test_examples = pick(a.test_examples, "eval_test_examples")
    a.seed = pick(a.seed, "eval_seed")
    return a


def run_evaluation(run_dir, argv=()) -> list[dict]:
    """Evaluate what is missing; returns the summary rows (step, split, variant, accuracy, n)."""
    import torch

    import models
    from train import dist_state

    state = dist_state()
    run = Path(run_dir)
    cfg = records.read_run_config(run)
    for k, v in cfg.items():  # a hand-edited config.yaml gets the same checks as a config file
        config_mod.check_value(k, v, str(run / "config.yaml"))
    cfg = {**{k: v[0] for k, v in config_mod.DEFAULTS.items()}, **cfg}
    opts = resolve_opts(parse_args([str(run), *argv]), cfg)

    ckpts = checkpoint_steps(run)
    if not opts.no_base and cfg["eval_base_model"]:
        ckpts = [(0, 0.0, None)] + ckpts
    if opts.steps:
        ckpts = [c for c in ckpts if c[0] in set(opts.steps)]
    if not ckpts:
        raise FileNotFoundError(f"{run}: no complete checkpoint to evaluate (run train.py first)")
    examples = {s: eval_examples(cfg, run, s, opts.train_examples if s == "train" else opts.test_examples)
                for s in opts.splits}

    def todo(step):
        t = [(s, v) for s in opts.splits for v in opts.variants
             if opts.force or not record_path(run, step, s, v).exists()]
        g = [s for s in opts.splits if opts.greedy and (opts.force or not greedy_path(run, step, s).exists())]
        return t, g

    tok = None
    base = None
    peft_model = None
    for step, epoch, folder in ckpts:
        jobs, gjobs = todo(step)
        if not jobs and not gjobs:
            log.info("step %d: records exist, skipped", step)
            continue
        if tok is None:
            tok = models.load_tokenizer(cfg["model"], cfg["tokenizer"])
            base = models.load_base_model(cfg)
            if torch.cuda.is_available() and cfg["quantization"] in ("none",):
                base.to(state.device)
        if folder is None:
            model = base
        elif cfg["lora_r"] == 0:
            model = models.load_checkpoint(cfg, folder).to(models.model_device(base))
        else:
            from peft import PeftModel

            name = f"step{step}"
            if peft_model is None:
                peft_model = PeftModel.from_pretrained(base, str(folder), adapter_name=name)
            else:
                old = peft_model.active_adapter
                peft_model.load_adapter(str(folder), adapter_name=name)
                peft_model.set_adapter(name)
                peft_model.delete_adapter(old)
            model = peft_model
        model.eval()
        for split, variant in jobs:
            rows = evaluate_split(model, tok, cfg, examples[split], split, variant, step, epoch, opts, state)
            if state.is_main_process:
                records.write_records(record_path(run, step, split, variant), rows)
            state.wait_for_everyone()
        for split in gjobs:
            rows = greedy_split(model, tok, cfg, examples[split], split, step, opts, state)
            if state.is_main_process:
                import pandas as pd
                records.atomic_write_parquet(greedy_path(run, step, split), pd.DataFrame(rows))
            state.wait_for_everyone()

    summary = []
    for step, split, variant, path in records.list_records(run):
        df = records.read_records(path)
        summary.append({"step": step, "epoch": float(df["epoch"].iloc[0]), "split": split, "variant": variant,
                        "accuracy": float(df["accuracy"].mean()), "n": len(df),
                        "mean_perplexity": float(df["perplexity"].mean()) if df["perplexity"].notna().any() else None})
    return summary


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        parse_args(argv or ["--help"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        summary = run_evaluation(argv[0], argv[1:])
    except (FileNotFoundError, config_mod.ConfigError, data_mod.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from train import dist_state

    if dist_state().is_main_process:
        print(f"\n{'step':>6} {'epoch':>6} {'split':6} {'variant':13} {'accuracy':>8} {'n':>6} {'mean ppl':>9}")
        for r in summary:
            mp = f"{r['mean_perplexity']:.3f}" if r["mean_perplexity"] else "-"
            print(f"{r['step']:>6} {r['epoch']:>6.2f} {r['split']:6} {r['variant']:13} {r['accuracy']:>8.3f} "
                  f"{r['n']:>6} {mp:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
