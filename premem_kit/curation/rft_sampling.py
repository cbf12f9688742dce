"""`curate.py rft`: sample k completions per train question from trained checkpoints, cache them, and
write the RFT data set (rft.py's filter and dedupe) with its report and figure.

    OUT.jsonl             GSM8K schema + provenance (a train_file for train.py, train_file_mode: replace)
    OUT.report.json       distinct paths per question, pass@k, filter counts, sources
    OUT.report.{png,pdf}  pass@k, distinct paths per question, distinct paths vs k
    CACHE/<run>.step-<step>.T<temp>.p<top_p>[.k<top_k>].m<max_new>.s<seed>.jsonl   raw samples (CACHE default
                          RUN/rft_samples): a rerun, a smaller k or another pooling samples nothing, a
                          larger k only the missing samples; an interrupted run resumes after its last
                          question batch.

The sampler is Yuan et al.'s (gsm8k-ScRel, single_inference_7b_13b.py: Hugging Face generate with
do_sample, temperature 0.7, its default top-k 50 and top-p 1.0, 256 new tokens): the defaults here.
top_k 0 and max_new_tokens None (the run's eval_max_new_tokens) give the kit's earlier sampler.
"""
from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from premem_kit.tasks import data as data_mod
from premem_kit.core import figures
from premem_kit.curation import rft
from premem_kit.core import runs
from premem_kit.core.config import Config
from premem_kit.tasks.arith import ARITH_CHECKS, DEFAULT_ARITH_CHECK
from premem_kit.core.errors import KitError
from premem_kit.core.files import atomic_write_json, write_jsonl

log = logging.getLogger("curate")


class RftError(KitError, ValueError):
    """Bad `curate.py rft` input; the message names the option."""


@dataclass
class RftOptions:
    """What `curate.py rft` samples and writes (its command-line options)."""

    sources: list[str]              # RUN or RUN:STEP, pooled in this order
    out: str
    k: int = 100
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 50                 # Hugging Face generate's default, Yuan et al.'s sampler; 0: off
    max_new_tokens: int | None = 256  # Yuan et al.'s; None: each run's eval_max_new_tokens
    questions: str = "run"          # run: the runs' train examples; split: the whole train split
    train_examples: int | None = None
    batch_size: int | None = None   # None: each run's eval_batch_size
    samples_per_call: int | None = None
    seed: int = 0
    cache_dir: str | None = None    # None: RUN/rft_samples
    original: bool = True
    figures: bool = True
    dedupe: str = rft.DEFAULT_DEDUPE            # reference (Yuan et al.) | strict (the kit's earlier rule)
    arith_check: str = DEFAULT_ARITH_CHECK      # reference (Yuan et al.) | rounding (earlier) | exact

    def check(self) -> None:
        for name in ("k", "batch_size", "samples_per_call", "max_new_tokens", "train_examples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise RftError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise RftError(f"--temperature must be > 0 and --top-p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.top_k < 0:
            raise RftError(f"--top-k must be >= 0 (0: off), got {self.top_k}")
        if self.dedupe not in rft.DEDUPE_RULES:
            raise RftError(f"--dedupe {self.dedupe!r}: expected one of {', '.join(rft.DEDUPE_RULES)}")
        if self.arith_check not in ARITH_CHECKS:
            raise RftError(f"--arith-check {self.arith_check!r}: expected one of {', '.join(ARITH_CHECKS)}")


@dataclass
class Checkpoint:
    """One --from: the run, its checked config, the step (0 = base model) and folder (None for step 0)."""

    run: Path
    cfg: Config
    step: int
    folder: Path | None

    @property
    def name(self) -> str:
        return f"{self.run.name}@{self.step}"


def parse_source(text: str) -> tuple[Path, int | None]:
    """RUN or RUN:STEP (STEP 0 = the untrained base model)."""
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and head:
        return Path(head), int(tail)
    return Path(text), None


def resolve_sources(texts: list[str]) -> list[Checkpoint]:
    """The checkpoints of the --from values (default step: the run's last complete checkpoint)."""
    out = []
    for text in texts:
        run, step = parse_source(text)
        if not runs.config_path(run).exists():
            raise RftError(f"--from {text}: {run} is not a run folder (no config.yaml)")
        cfg = runs.read_config(run)
        step, folder = runs.find_checkpoint(run, step)
        out.append(Checkpoint(run, cfg, step, folder))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise RftError(f"the same checkpoint is given twice: {names}")
    return out


def _run_questions(run: Path, cfg: Config, by_id: dict) -> list[tuple[str, dict]]:
    """(source id, example) per train example of a run: RFT/curated rows map back to their source
    question (the row itself when its source is not in the split)."""
    out = []
    for e in data_mod.run_train_examples(run, cfg):
        sid = (e.get("meta") or {}).get("source_id") or e["id"]
        out.append((sid, by_id.get(sid, e)))
    return out


def rft_questions(sources: list[tuple[Path, Config]], mode: str = "run", n: int | None = None) -> list[dict]:
    """The train questions to sample: the runs' train examples (subset_ids.json, union in --from order,
    mapped back to their source question when a run trained on RFT/curated rows) or the whole train
    split (mode "split"); in the split's order; the first n."""
    cfg0 = sources[0][1]
    keys = ("task", "data", "data_config", "math_levels")
    for run, cfg in sources[1:]:
        diff = [k for k in keys if getattr(cfg, k) != getattr(cfg0, k)]
        if diff:
            raise RftError(f"{run} uses other data than {sources[0][0]} ({', '.join(diff)} differ): "
                           f"pooled models must share task and data")
    split = data_mod.load_split(cfg0, "train")
    by_id = {e["id"]: e for e in split}
    order = {e["id"]: i for i, e in enumerate(split)}
    if mode == "split":
        exs = list(split)
    else:
        chosen: dict[str, dict] = {}
        for run, cfg in dict((str(r), (r, c)) for r, c in sources).values():
            for sid, e in _run_questions(run, cfg, by_id):
                chosen.setdefault(sid, e)
        exs = sorted(chosen.values(), key=lambda e: order.get(e["id"], len(order)))
    return exs[:n] if n else exs


def load_sampling_model(cfg: Config, folder: Path | None):
    """Tokenizer and model of a checkpoint (base + LoRA adapter, as evaluate.py), or the base model."""
    import torch

    from premem_kit.models import loading as models

    tok = models.load_tokenizer(cfg.model, cfg.tokenizer)
    if folder is None:
        model = models.load_base_model(cfg)
    else:
        model = models.load_checkpoint(cfg, folder)
        if cfg.lora_r == 0 and torch.cuda.is_available():
            model.to("cuda")
    return tok, model.eval()


def _sample_into(cache: rft.SampleCache, ck: Checkpoint, examples: list[dict], missing: int, max_new: int,
                 opts: RftOptions) -> int:
    """Load the checkpoint and fill the cache up to k samples per question; returns the new samples."""
    from tqdm.auto import tqdm

    from premem_kit.models import inference

    log.info("%s: sampling %d completions (cache %s)", ck.name, missing, cache.path)
    tok, model = load_sampling_model(ck.cfg, ck.folder)
    bar = tqdm(total=missing, desc=f"{ck.name} sampling", unit="sample", dynamic_ncols=True)
    ntok = [0]
    ts = time.time()

    def sample_fn(prompts, n, seed):
        outs, nt = inference.sample(model, tok, prompts, n=n, temperature=opts.temperature, top_p=opts.top_p,
                                    top_k=opts.top_k, max_new_tokens=max_new, batch_size=len(prompts), seed=seed,
                                    progress=False)
        ntok[0] += nt
        bar.set_postfix(tok_s=f"{ntok[0] / max(time.time() - ts, 1e-9):.1f}")
        return outs

    per_call = opts.batch_size or inference.prompts_per_batch(ck.cfg.eval_batch_size, opts.samples_per_call or opts.k,
                                                              next(model.parameters()).device)
    new = rft.fill_cache(cache, examples, opts.k, sample_fn, batch_size=per_call,
                         samples_per_call=opts.samples_per_call, seed=opts.seed, progress=bar.update)
    bar.close()
    log.info("%s: %d samples, %d tokens in %.0f s", ck.name, new, ntok[0], time.time() - ts)
    del model, tok
    gc.collect()
    return new


def sample_checkpoint(ck: Checkpoint, examples: list[dict], opts: RftOptions) -> tuple[rft.Source, dict]:
    """The checkpoint's first k samples per question (sampling only what its cache lacks), as an
    rft.Source, and its entry in the report's `sources`."""
    max_new = opts.max_new_tokens or ck.cfg.eval_max_new_tokens
    meta = {"run": str(ck.run), "step": ck.step, "model": ck.cfg.model, "temperature": opts.temperature,
            "top_p": opts.top_p, "max_new_tokens": max_new, "seed": opts.seed}
    if opts.top_k:  # caches of the earlier sampler (top-k off) keep their name and header
        meta["top_k"] = opts.top_k
    cdir = Path(opts.cache_dir) if opts.cache_dir else runs.rft_cache_dir(ck.run)
    name = rft.cache_name(ck.run.name, ck.step, opts.temperature, opts.top_p, max_new, opts.seed, opts.top_k)
    cache = rft.SampleCache(cdir / name, meta)
    missing = sum(max(0, opts.k - cache.count(e["id"])) for e in examples)
    new = 0
    if missing:
        new = _sample_into(cache, ck, examples, missing, max_new, opts)
    else:
        log.info("%s: all samples cached (%s)", ck.name, cache.path)
    source = rft.Source(ck.name, {e["id"]: cache.samples(e["id"]) for e in examples},
                        {"model": ck.cfg.model, "run": str(ck.run), "step": ck.step})
    info = {"name": ck.name, "run": str(ck.run), "step": ck.step, "model": ck.cfg.model,
            "max_new_tokens": max_new, "cache": str(cache.path), "new_samples": new}
    return source, info


def output_base(out) -> Path:
    """OUT without its .jsonl suffix: the report is <base>.report.json, the figure <base>.report.png."""
    out = Path(out)
    return out.with_suffix("") if out.suffix == ".jsonl" else out


def make_rft_data(opts: RftOptions) -> tuple[dict, Path]:
    """Sample, filter, dedupe and write the RFT data set, its report and figure. Returns (report, report
    path)."""
    t0 = time.time()
    opts.check()
    out = Path(opts.out)
    ckpts = resolve_sources(opts.sources)
    task = ckpts[0].cfg.task
    examples = rft_questions([(c.run, c.cfg) for c in ckpts], opts.questions, opts.train_examples)
    log.info("%d questions x k=%d samples x %d checkpoint(s)", len(examples), opts.k, len(ckpts))
    sources, src_info = [], []
    for ck in ckpts:
        source, info = sample_checkpoint(ck, examples, opts)
        sources.append(source)
        src_info.append(info)
    rows, stats = rft.build_rft_rows(examples, sources, task, opts.k, add_original=opts.original,
                                     dedupe=opts.dedupe, arith_check=opts.arith_check)
    write_jsonl(out, rows)
    data_mod.load_extra_file(out, task)  # the file must be one train.py accepts
    report = {"out": str(out), "task": task, "k": opts.k, "questions_from": opts.questions,
              "sampling": {"temperature": opts.temperature, "top_p": opts.top_p, "top_k": opts.top_k,
                           "seed": opts.seed},
              "sources": src_info, **stats, "seconds": round(time.time() - t0, 1)}
    base = output_base(out)
    rpath = Path(f"{base}.report.json")
    atomic_write_json(rpath, report)
    if opts.figures:
        plot_rft(report, base.parent, f"{base.name}.report")
    return report, rpath


def rft_figure(report: dict):
    """pass@k per model, distinct paths per question, distinct paths vs k."""
    plt = figures.pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    for name, pk in report["pass_at_k"].items():
        ax[0].plot([int(k) for k in pk], list(pk.values()), marker="o", label=name,
                   ls="--" if name == "pooled" else "-")
    ax[0].set_xscale("log", base=2)
    ax[0].set_xlabel("k (samples per question)")
    ax[0].set_ylabel("pass@k (unbiased)")
    ax[0].set_ylim(-0.02, 1.02)
    ax[0].legend(fontsize=8)
    ax[0].set_title("pass@k on the train questions")
    distinct = report["distinct_paths_per_question"]
    dist = distinct["distribution"]
    ax[1].bar([int(x) for x in dist], list(dist.values()), color="tab:blue")
    ax[1].set_xlabel("distinct reasoning paths (incl. original)" if distinct["includes_original"]
                     else "distinct reasoning paths")
    ax[1].set_ylabel("questions")
    ax[1].set_title(f"mean {distinct['mean']:.2f} paths / question")
    dk = report["distinct_paths_vs_k"]
    ax[2].plot([int(k) for k in dk], list(dk.values()), marker="o")
    ax[2].set_xscale("log", base=2)
    ax[2].set_xlabel(f"k per model ({len(report['sources'])} model(s) pooled)")
    ax[2].set_ylabel("mean distinct paths / question")
    ax[2].set_title("distinct paths vs k")
    fig.suptitle(f"RFT data: {report['questions']} questions, k={report['k']}, {report['rows']} rows")
    fig.tight_layout()
    return fig


def plot_rft(report: dict, folder, stem: str) -> list[str]:
    """Draw the report's figure and save folder/stem.{png,pdf}; returns the file names."""
    return figures.save(rft_figure(report), folder, stem)
