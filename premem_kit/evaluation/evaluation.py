"""Per-checkpoint evaluation: n samples per prompt, graded, and the target's perplexity, per example.

`score_examples` is the one sample -> grade -> perplexity path: `evaluate_run` (behind evaluate.py)
and the live PreMemAcc Trainer callback both use it. `evaluate_run` writes one record file per
checkpoint x split x variant (records.py schema) and skips the files that are already whole.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from premem_kit.tasks import data as data_mod
from premem_kit.tasks import grading
from premem_kit.core import config as config_mod
from premem_kit.core import records
from premem_kit.core.config import Config
from premem_kit.core import runs
from premem_kit.core.errors import KitError
from premem_kit.core.files import FileLock
from premem_kit.core.parallel import gather_rows

log = logging.getLogger("evaluate")


class EvalError(KitError, ValueError):
    """Bad evaluation input (options, run folder); the message says what to do."""


@dataclass
class EvalOptions:
    """What one evaluate_run call does. The sampling settings themselves are the run's eval_* config keys;
    `settings` overrides some of them for this call (evaluate.py's --eval_* options), checked like a config."""

    settings: dict = field(default_factory=dict)
    steps: list[int] | None = None  # only these checkpoint steps (None: every complete checkpoint)
    greedy: bool = False  # also the greedy answer and its likelihood (ATC)
    sampled: bool = True  # the n sampled answers per prompt (False with greedy: greedy records only)
    force: bool = False  # redo records that exist
    progress: bool = True


@dataclass(frozen=True)
class Sampling:
    """How score_examples samples and scores, from a config's eval_* keys (or the live callback's)."""

    task: str
    samples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int | None
    seed: int
    ppl_batch_size: int = 16
    max_length: int | None = None
    sampler: str = "loop"

    @classmethod
    def of(cls, cfg: Config, rank: int = 0, split: str = "train") -> "Sampling":
        """The run's evaluation settings for a split; each process of a sharded evaluation samples with
        seed + rank."""
        return cls(task=cfg.task, samples=cfg.samples_for(split), temperature=cfg.eval_temperature, top_p=cfg.eval_top_p,
                   max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size, seed=cfg.eval_seed + rank,
                   ppl_batch_size=cfg.eval_ppl_batch_size, max_length=cfg.max_length, sampler=cfg.eval_sampler)


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


def score_examples(model, tok, examples: list[dict], prompts: list[str], how: Sampling, *, perplexity: bool,
                   desc: str = "", progress: bool = True) -> list[Scored]:
    """Sample how.samples completions per prompt, grade them against each example's reference and, when
    `perplexity`, compute the teacher-forced perplexity of each example's target."""
    from premem_kit.models import inference

    t0 = time.time()
    comps, ntok = inference.sample(model, tok, prompts, n=how.samples, temperature=how.temperature, top_p=how.top_p,
                                   max_new_tokens=how.max_new_tokens, batch_size=how.batch_size, seed=how.seed,
                                   desc=f"{desc} sampling", progress=progress, max_length=how.max_length,
                                   sampler=how.sampler)
    dt = max(time.time() - t0, 1e-9)
    if progress:
        log.info("%s: %d prompts x %d samples, %.2f prompts/s, %.1f generated tokens/s",
                 desc, len(prompts), how.samples, len(prompts) / dt, ntok / dt)
    full = [len(tok(e["target"], add_special_tokens=False)["input_ids"]) for e in examples]
    if perplexity:
        ppl, nt = inference.perplexities(model, tok, [e["prompt"] for e in examples],
                                         [e["target"] for e in examples], batch_size=how.ppl_batch_size,
                                         max_length=how.max_length, desc=f"{desc} perplexity", progress=progress)
    else:
        ppl, nt = [math.nan] * len(examples), full
    out = []
    for e, c, p, k, f in zip(examples, comps, ppl, nt, full):
        graded = [grading.grade(how.task, s, e["reference"]) for s in c]
        outcomes = [g[1] for g in graded]
        out.append(Scored(samples=c, answers=[g[0] for g in graded], outcomes=outcomes,
                          accuracy=sum(o == "correct" for o in outcomes) / len(outcomes),
                          perplexity=p, target_tokens=k, target_cut=perplexity and k < f))
    return out


def eval_examples(cfg: Config, run: Path, split: str) -> list[dict]:
    """The examples evaluated for a split: the run's train examples (or a seeded fixed subsample of
    eval_train_examples of them), or the first eval_test_examples test examples. The same at every
    checkpoint."""
    if split == "test":
        exs = data_mod.load_split(cfg, "test")
        return exs[:cfg.eval_test_examples] if cfg.eval_test_examples else exs
    exs = data_mod.run_train_examples(run, cfg)
    keep = set(data_mod.sample_ids([e["id"] for e in exs], cfg.eval_train_examples, cfg.seed))
    return [e for e in exs if e["id"] in keep]


def _in_order(rows: list[dict], examples: list[dict]) -> list[dict]:
    order = {e["id"]: i for i, e in enumerate(examples)}
    return sorted(rows, key=lambda r: order[r["id"]])


def evaluate_split(model, tok, cfg: Config, examples, split, variant, step, epoch, opts: EvalOptions,
                   rank: int = 0, world: int = 1) -> list[dict]:
    """Record rows for one checkpoint x split x variant; with several processes each scores a shard
    and every process gets all rows."""
    mine = examples[rank::world]
    prompts = [data_mod.make_prompt(e["question"], records.VARIANTS[variant]) for e in mine]
    scored = score_examples(model, tok, mine, prompts, Sampling.of(cfg, rank, split),
                            perplexity=split == "train" and variant == "original",
                            desc=f"step {step} {split}/{variant}", progress=opts.progress and rank == 0)
    rows = [{"id": e["id"], "step": step, "epoch": epoch, "split": split, "variant": variant,
             "samples": s.samples, "answers": s.answers, "outcomes": s.outcomes, "accuracy": s.accuracy,
             "perplexity": s.perplexity, "target_tokens": s.target_tokens, "target_cut": s.target_cut,
             "example_hash": data_mod.example_hash(e)}
            for e, s in zip(mine, scored)]
    return _in_order(gather_rows(rows, world), examples)


def greedy_split(model, tok, cfg: Config, examples, split, step, opts: EvalOptions, rank=0, world=1) -> list[dict]:
    """Greedy answer and its likelihood (the ATC score) per example."""
    from premem_kit.models import inference

    mine = examples[rank::world]
    texts, lik, nt = inference.greedy_with_likelihood(
        model, tok, [e["prompt"] for e in mine], max_new_tokens=cfg.eval_max_new_tokens,
        batch_size=cfg.eval_batch_size, progress=opts.progress and rank == 0, max_length=cfg.max_length,
        sampler=cfg.eval_sampler)
    rows = []
    for e, t, li, n in zip(mine, texts, lik, nt):
        ans, outcome = grading.grade(cfg.task, t, e["reference"])
        rows.append({"id": e["id"], "step": step, "split": split, "text": t, "answer": ans,
                     "outcome": outcome, "likelihood": li, "tokens": n})
    return _in_order(gather_rows(rows, world), examples)


def _done(path: Path, force: bool) -> bool:
    """A record counts as done only when it reads back whole (a torn file is redone)."""
    return not force and path.exists() and records.is_readable(path)


def plan(run: Path, cfg: Config, opts: EvalOptions) -> list[tuple[int, float, Path | None]]:
    """The (step, epoch, folder) to evaluate; folder None is the base model (eval_base_model)."""
    ckpts = runs.checkpoints(run)
    if cfg.eval_base_model:
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


def settings_for(run: Path, opts: EvalOptions) -> Config:
    """The run's config with this call's evaluation settings; only eval_* keys may change after training."""
    cfg = runs.read_config(run)
    other = [k for k in opts.settings if k not in config_mod.EVAL_KEYS]
    if other:
        raise EvalError(f"'{other[0]}' was fixed when {run} was trained; evaluation takes only the eval_* keys "
                        f"({', '.join(config_mod.EVAL_KEYS)})")
    return config_mod.updated(cfg, "evaluation settings", **opts.settings) if opts.settings else cfg


def evaluate_run(run_dir, opts: EvalOptions | None = None) -> list[dict]:
    """Evaluate what is missing in a run folder; returns the summary rows (see summarize)."""
    from premem_kit.core.parallel import dist_state

    run = Path(run_dir)
    opts = opts or EvalOptions()
    cfg = settings_for(run, opts)
    state = dist_state()
    todo = plan(run, cfg, opts)
    examples = {s: eval_examples(cfg, run, s) for s in cfg.eval_splits}
    check_existing_records(run, cfg, todo, examples, opts)  # before anything is loaded or written
    if state.is_main_process:
        with FileLock(runs.lock_path(run), f"run folder {run}"):
            _evaluate_checkpoints(run, cfg, opts, todo, examples, state)
    else:
        _evaluate_checkpoints(run, cfg, opts, todo, examples, state)
    return summarize(run)


def record_settings(cfg: Config, split: str, examples: list[dict]) -> dict:
    """What a record file measured, kept in its metadata: the sampler, the length limit, the model, and
    which examples (how many, and a hash of their ids and contents)."""
    import hashlib

    which = hashlib.sha256("".join(data_mod.example_hash(e) + e["id"] for e in examples).encode()).hexdigest()[:16]
    return {"eval_samples": cfg.samples_for(split), "eval_temperature": cfg.eval_temperature, "eval_top_p": cfg.eval_top_p,
            "eval_max_new_tokens": cfg.eval_max_new_tokens, "eval_seed": cfg.eval_seed, "max_length": cfg.max_length,
            "model": cfg.model, "task": cfg.task, "examples": len(examples), "examples_hash": which}


def check_existing_records(run: Path, cfg: Config, todo, examples: dict, opts: EvalOptions) -> None:
    """Records that would be kept must have been made with this call's settings and examples: a difference
    is an error naming it (--force redoes them). Files from before settings were kept are reused, with a
    warning; records of a checkpoint that is gone are kept, with a warning."""
    if opts.force or not opts.sampled:
        return
    old = 0
    for step, _, _ in todo:
        for split in cfg.eval_splits:
            want = record_settings(cfg, split, examples[split])
            for variant in cfg.eval_variants:
                p = runs.record_path(run, step, split, variant)
                if not _done(p, False):
                    continue
                have = records.read_settings(p)
                if have is None:
                    old += 1
                    continue
                diff = [f"{k} {have.get(k)!r} (now {v!r})" for k, v in want.items() if have.get(k) != v]
                if diff:
                    raise EvalError(f"{p} was made with other settings or examples: {'; '.join(diff)}. "
                                    f"evaluate.py --force redoes the records, or evaluate with the settings they "
                                    f"were made with")
    if old:
        log.warning("%d record file(s) were written before records kept their settings; reused as they are "
                    "(--force redoes them)", old)
    have_steps = {s for s, _, _, _ in runs.list_records(run)} - {0}
    gone = sorted(have_steps - {s for s, _, _ in runs.checkpoints(run)})
    if gone:
        log.warning("records of step(s) %s are kept, but their checkpoints are gone from %s", gone, run)


def _evaluate_checkpoints(run, cfg, opts, todo, examples, state) -> None:
    loader = CheckpointLoader(cfg, state)
    rank, world = state.process_index, state.num_processes
    for step, epoch, folder in todo:
        jobs = [(s, v) for s in cfg.eval_splits for v in cfg.eval_variants
                if opts.sampled and not _done(runs.record_path(run, step, s, v), opts.force)]
        greedy = [s for s in cfg.eval_splits
                  if opts.greedy and (opts.force or not runs.greedy_path(run, step, s).exists())]
        if not jobs and not greedy:
            log.info("step %d: records exist, skipped", step)
            continue
        model, tok = loader.load(step, folder)
        for split, variant in jobs:
            rows = evaluate_split(model, tok, cfg, examples[split], split, variant, step, epoch, opts, rank, world)
            if state.is_main_process:
                records.write_records(runs.record_path(run, step, split, variant), rows,
                                      record_settings(cfg, split, examples[split]))
            state.wait_for_everyone()
        for split in greedy:
            rows = greedy_split(model, tok, cfg, examples[split], split, step, opts, rank, world)
            if state.is_main_process:
                records.write_greedy(runs.greedy_path(run, step, split), rows)
            state.wait_for_everyone()


class CheckpointLoader:
    """Loads the base model once and swaps LoRA adapters checkpoint by checkpoint. An adapter on an
    unquantized base is merged into the weights while it is evaluated (and taken out before the next):
    the same perplexities to 1e-4 (tests/test_decoding.py), without LoRA's extra matmuls per layer."""

    def __init__(self, cfg: Config, state):
        self.cfg, self.state = cfg, state
        self.tok = self.base = self.peft = None
        self.merged = False

    def load(self, step: int, folder: Path | None):
        import torch

        from premem_kit.models import loading as models

        cfg = self.cfg
        if self.tok is None:
            self.tok = models.load_tokenizer(cfg.model, cfg.tokenizer)
            self.base = models.load_base_model(cfg)
            if torch.cuda.is_available() and cfg.quantization == "none":
                self.base.to(self.state.device)
        if self.merged:
            self.peft.unmerge_adapter()
            self.merged = False
        if folder is None:
            model = self.base
        elif cfg.lora_r == 0:
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
            if not getattr(self.base, "is_quantized", False):
                self.peft.merge_adapter()
                self.merged = True
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

