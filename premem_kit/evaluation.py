"""Per-checkpoint evaluation: n samples per prompt, graded, and the target's perplexity, per example.

`score_examples` is the one sample -> grade -> perplexity path: `evaluate_run` (behind evaluate.py)
and the live PreMemAcc Trainer callback both use it. `evaluate_run` writes one record file per
checkpoint x split x variant (records.py schema) and skips the files that are already whole.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from . import data as data_mod
from . import grading, records, runs
from .errors import KitError
from .files import FileLock
from .parallel import gather_rows

log = logging.getLogger("evaluate")


class EvalError(KitError, ValueError):
    """Bad evaluation input (options, run folder); the message says what to do."""


@dataclass
class EvalOptions:
    """What to evaluate; None means "the run's eval_* config key"."""

    splits: list[str] | None = None
    variants: list[str] | None = None
    samples: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    ppl_batch_size: int | None = None
    train_examples: int | None = None
    test_examples: int | None = None
    seed: int | None = None
    steps: list[int] | None = None
    base: bool | None = None  # evaluate the untrained model as step 0 (None: config eval_base_model)
    greedy: bool = False
    force: bool = False
    progress: bool = True

    def resolve(self, cfg: dict) -> "EvalOptions":
        """A copy with every None filled from the run's config, range-checked."""
        keys = {"splits": "eval_splits", "variants": "eval_variants", "samples": "eval_samples",
                "temperature": "eval_temperature", "top_p": "eval_top_p",
                "max_new_tokens": "eval_max_new_tokens", "batch_size": "eval_batch_size",
                "ppl_batch_size": "eval_ppl_batch_size", "train_examples": "eval_train_examples",
                "test_examples": "eval_test_examples", "seed": "eval_seed", "base": "eval_base_model"}
        o = replace(self, **{f: cfg[k] for f, k in keys.items() if getattr(self, f) is None})
        o.check()
        return o

    def check(self) -> None:
        for name in ("samples", "max_new_tokens", "batch_size", "ppl_batch_size", "train_examples",
                     "test_examples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise EvalError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
        if self.temperature is not None and not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise EvalError(f"--temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise EvalError(f"--top-p must be in (0, 1], got {self.top_p}")


@dataclass
class Scored:
    """One example's evaluation: samples, graded answers, accuracy and target perplexity."""

    samples: list[str]
    answers: list
    outcomes: list[str]
    accuracy: float
    perplexity: float = math.nan
    target_tokens: int = 0
    target_cut: bool = False
    extra: dict = field(default_factory=dict)


def score_examples(model, tok, task: str, examples: list[dict], prompts: list[str], *, n: int,
                   temperature: float, top_p: float, max_new_tokens: int, batch_size: int, seed: int,
                   perplexity: bool, ppl_batch_size: int = 16, max_length: int | None = None,
                   desc: str = "", progress: bool = True) -> list[Scored]:
    """Sample n completions per prompt, grade them against each example's reference and, when
    `perplexity`, compute the teacher-forced perplexity of each example's target."""
    from . import inference

    t0 = time.time()
    comps, ntok = inference.sample(model, tok, prompts, n=n, temperature=temperature, top_p=top_p,
                                   max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                   desc=f"{desc} sampling", progress=progress)
    dt = max(time.time() - t0, 1e-9)
    if progress:
        log.info("%s: %d prompts x %d samples, %.2f prompts/s, %.1f generated tokens/s",
                 desc, len(prompts), n, len(prompts) / dt, ntok / dt)
    full = [len(tok(e["target"], add_special_tokens=False)["input_ids"]) for e in examples]
    if perplexity:
        ppl, nt = inference.perplexities(model, tok, [e["prompt"] for e in examples],
                                         [e["target"] for e in examples], batch_size=ppl_batch_size,
                                         max_length=max_length, desc=f"{desc} perplexity", progress=progress)
    else:
        ppl, nt = [math.nan] * len(examples), full
    out = []
    for e, c, p, k, f in zip(examples, comps, ppl, nt, full):
        graded = [grading.grade(task, s, e["reference"]) for s in c]
        outcomes = [g[1] for g in graded]
        out.append(Scored(samples=c, answers=[g[0] for g in graded], outcomes=outcomes,
                          accuracy=sum(o == "correct" for o in outcomes) / len(outcomes),
                          perplexity=p, target_tokens=k, target_cut=perplexity and k < f))
    return out


def eval_examples(cfg: dict, run: Path, split: str, n=None) -> list[dict]:
    """The examples evaluated for a split: the run's train ids (or a seeded fixed subsample of n), or
    the first n test examples. The same at every checkpoint."""
    if split == "test":
        exs = data_mod.load_split(cfg["task"], cfg["data"], "test", cfg["data_config"], cfg["math_levels"])
        return exs[:n] if n else exs
    ids = runs.read_train_ids(run)
    pool = data_mod.load_split(cfg["task"], cfg["data"], "train", cfg["data_config"], cfg["math_levels"])
    if cfg["train_file"]:
        pool += data_mod.load_extra_file(cfg["train_file"], cfg["task"])
    by_id = {e["id"]: e for e in pool}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise data_mod.DataError(f"{runs.subset_ids_path(run)}: {len(missing)} ids not in the data "
                                 f"(first: {missing[0]})")
    return [by_id[i] for i in data_mod.sample_ids(ids, n, cfg["seed"])]


def _in_order(rows: list[dict], examples: list[dict]) -> list[dict]:
    order = {e["id"]: i for i, e in enumerate(examples)}
    return sorted(rows, key=lambda r: order[r["id"]])


def evaluate_split(model, tok, cfg, examples, split, variant, step, epoch, opts: EvalOptions,
                   rank: int = 0, world: int = 1) -> list[dict]:
    """Record rows for one checkpoint x split x variant; with several processes each scores a shard
    and every process gets all rows."""
    mine = examples[rank::world]
    prompts = [data_mod.make_prompt(e["question"], records.VARIANTS[variant]) for e in mine]
    scored = score_examples(
        model, tok, cfg["task"], mine, prompts, n=opts.samples, temperature=opts.temperature,
        top_p=opts.top_p, max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size,
        seed=opts.seed + rank, perplexity=split == "train" and variant == "original",
        ppl_batch_size=opts.ppl_batch_size, max_length=cfg["max_length"],
        desc=f"step {step} {split}/{variant}", progress=opts.progress and rank == 0)
    rows = [{"id": e["id"], "step": step, "epoch": epoch, "split": split, "variant": variant,
             "samples": s.samples, "answers": s.answers, "outcomes": s.outcomes, "accuracy": s.accuracy,
             "perplexity": s.perplexity, "target_tokens": s.target_tokens, "target_cut": s.target_cut}
            for e, s in zip(mine, scored)]
    return _in_order(gather_rows(rows, world), examples)


def greedy_split(model, tok, cfg, examples, split, step, opts: EvalOptions, rank=0, world=1) -> list[dict]:
    """Greedy answer and its likelihood (the ATC score) per example."""
    from . import inference

    mine = examples[rank::world]
    texts, lik, nt = inference.greedy_with_likelihood(
        model, tok, [e["prompt"] for e in mine], max_new_tokens=opts.max_new_tokens,
        batch_size=opts.batch_size, progress=opts.progress and rank == 0)
    rows = []
    for e, t, li, n in zip(mine, texts, lik, nt):
        ans, outcome = grading.grade(cfg["task"], t, e["reference"])
        rows.append({"id": e["id"], "step": step, "split": split, "text": t, "answer": ans,
                     "outcome": outcome, "likelihood": li, "tokens": n})
    return _in_order(gather_rows(rows, world), examples)


def _done(path: Path, force: bool) -> bool:
    """A record counts as done only when it reads back whole (a torn file is redone)."""
    return not force and path.exists() and records.is_readable(path)


def plan(run: Path, cfg: dict, opts: EvalOptions) -> list[tuple[int, float, Path | None]]:
    """The (step, epoch, folder) to evaluate; folder None is the base model."""
    ckpts = runs.checkpoints(run)
    if opts.base:
        ckpts = [(0, 0.0, None)] + ckpts
    if opts.steps:
        have = {s for s, _, _ in ckpts}
        unknown = [s for s in opts.steps if s not in have]
        if unknown:
            raise EvalError(f"{run}: --steps {unknown[0]} is not a complete checkpoint (have: "
                            + (", ".join(str(s) for s in sorted(have)) or "none") + ")")
        ckpts = [c for c in ckpts if c[0] in set(opts.steps)]
    if not ckpts:
        raise EvalError(f"{run}: no complete checkpoint to evaluate; run `python train.py` for this run first")
    return ckpts


def evaluate_run(run_dir, opts: EvalOptions | None = None) -> list[dict]:
    """Evaluate what is missing in a run folder; returns the summary rows (see summarize)."""
    from .parallel import dist_state

    run = Path(run_dir)
    cfg = runs.read_config(run)
    opts = (opts or EvalOptions()).resolve(cfg)
    state = dist_state()
    todo = plan(run, cfg, opts)
    examples = {s: eval_examples(cfg, run, s, opts.train_examples if s == "train" else opts.test_examples)
                for s in opts.splits}
    if state.is_main_process:
        with FileLock(runs.lock_path(run), f"run folder {run}"):
            _evaluate_checkpoints(run, cfg, opts, todo, examples, state)
    else:
        _evaluate_checkpoints(run, cfg, opts, todo, examples, state)
    return summarize(run)


def _evaluate_checkpoints(run, cfg, opts, todo, examples, state) -> None:
    loader = CheckpointLoader(cfg, state)
    rank, world = state.process_index, state.num_processes
    for step, epoch, folder in todo:
        jobs = [(s, v) for s in opts.splits for v in opts.variants
                if not _done(runs.record_path(run, step, s, v), opts.force)]
        greedy = [s for s in opts.splits if opts.greedy and (opts.force or not runs.greedy_path(run, step, s).exists())]
        if not jobs and not greedy:
            log.info("step %d: records exist, skipped", step)
            continue
        model, tok = loader.load(step, folder)
        for split, variant in jobs:
            rows = evaluate_split(model, tok, cfg, examples[split], split, variant, step, epoch, opts, rank, world)
            if state.is_main_process:
                records.write_records(runs.record_path(run, step, split, variant), rows)
            state.wait_for_everyone()
        for split in greedy:
            rows = greedy_split(model, tok, cfg, examples[split], split, step, opts, rank, world)
            if state.is_main_process:
                records.write_greedy(runs.greedy_path(run, step, split), rows)
            state.wait_for_everyone()


class CheckpointLoader:
    """Loads the base model once and swaps LoRA adapters checkpoint by checkpoint."""

    def __init__(self, cfg: dict, state):
        self.cfg, self.state = cfg, state
        self.tok = self.base = self.peft = None

    def load(self, step: int, folder: Path | None):
        import torch

        from . import models

        cfg = self.cfg
        if self.tok is None:
            self.tok = models.load_tokenizer(cfg["model"], cfg["tokenizer"])
            self.base = models.load_base_model(cfg)
            if torch.cuda.is_available() and cfg["quantization"] == "none":
                self.base.to(self.state.device)
        if folder is None:
            model = self.base
        elif cfg["lora_r"] == 0:
            model = models.load_checkpoint(cfg, folder).to(models.model_device(self.base))
        else:
            models.check_adapter(folder)
            from peft import PeftModel

            name = f"step{step}"
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, str(folder), adapter_name=name)
            else:
                old = self.peft.active_adapter
                self.peft.load_adapter(str(folder), adapter_name=name)
                self.peft.set_adapter(name)
                self.peft.delete_adapter(old)
            model = self.peft
        return model.eval(), self.tok


def summarize(run) -> list[dict]:
    """Mean accuracy (and mean perplexity) per record file: step, epoch, split, variant, accuracy, n."""
    out = []
    for step, split, variant, path in runs.list_records(run):
        df = records.read_records(path)
        ppl = df["perplexity"]
        out.append({"step": step, "epoch": float(df["epoch"].iloc[0]), "split": split, "variant": variant,
                    "accuracy": float(df["accuracy"].mean()), "n": len(df),
                    "mean_perplexity": float(ppl.mean()) if ppl.notna().any() else None,
                    "targets_cut": int(df["target_cut"].sum())})
    return out


def option_names() -> list[str]:
    return [f.name for f in fields(EvalOptions)]
