"""Algorithm 1's choice of P'(x), the train examples new data should resemble (`curate.py select`).

premem     train examples whose PreMemAcc at the run's last checkpoint is below t (default 0.75). PreMemAcc
           is the metric over the trained checkpoints with train records; the memorization threshold
           (loglog convention) is the task's in the authors' curation notebooks, GSM8K -2.4 and MATH -1.7
           (MEM_THRESHOLDS), unless given (--mem-threshold X) or read from a `premem.py analyze` summary.json (--threshold-from).
iid        every train example (P'(x) = D_train; new data is drawn uniformly).
ifd        Instruction-Following Difficulty = perplexity(y | x) / perplexity(y) from a scorer model trained
           briefly on data disjoint from the scored set (the paper: the test split, 2 epochs); the top 50%
           (GSM8K) / 75% (MATH). perplexity(y) is the target's perplexity after the tokenizer's BOS alone
           (an empty prompt). Ties keep the run's train order.
heuristic  GSM8K: number of non-empty lines of the solution; MATH: the level. Top 50% / 75%, ties in the
           run's train order.

P'(x) is chosen among D_train, the run's original train examples, as Algorithm 1 (line 6) evaluates
PreMemAcc on D_train: curated rows a later round trains on (train_file rows whose `source_id` names
another example) are left out. With select_from "all" (--select-from all, the kit's earlier rule) they
take part too: their `source_id` maps them back to the original train example, so choosing a curated row
makes its source eligible.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

from premem_kit.tasks import data as data_mod
from premem_kit.core import runs
from premem_kit.curation.vocabulary import (DEFAULT_T, SELECT_FROM, STRATEGIES, TOP_FRACTION, CurationError,
                                            source_of, task_mem_threshold)
from premem_kit.core.config import Config
from premem_kit.core.files import atomic_write_json, read_jsonl, write_jsonl


def d_train(examples: list[dict], select_from: str = "original", ids=None) -> list[dict]:
    """The examples P'(x) is chosen from. "original": D_train, the examples whose id is in `ids` (Algorithm
    1 passes its seed set) or, without ids, those that derive from no other example; "all": every one."""
    if select_from not in SELECT_FROM:
        raise CurationError(f"--select-from {select_from!r}: expected one of {', '.join(SELECT_FROM)}")
    if select_from == "all":
        return list(examples)
    keep = set(ids) if ids is not None else None
    out = [e for e in examples if (e["id"] in keep if keep is not None else source_of(e) == e["id"])]
    if not out:
        raise CurationError("none of the run's train examples is an original D_train example (every row derives "
                            "from another); use --select-from all")
    return out


def resolve_mem_threshold(task: str, mem_threshold: float | None = None,
                          threshold_from=None) -> tuple[float, str]:
    """(loglog memorization threshold, where it came from): given, read from the summary.json of a
    `premem.py analyze` run (threshold_loglog), or else the task's (GSM8K -2.4, MATH -1.7)."""
    if mem_threshold is not None and threshold_from is not None:
        raise CurationError("give --mem-threshold or --threshold-from, not both")
    if mem_threshold is not None:
        return float(mem_threshold), "given"
    if threshold_from is not None:
        from premem_kit.analysis.calibration import threshold_from_summary

        return threshold_from_summary(threshold_from), f"from {threshold_from}"
    return task_mem_threshold(task), f"{task} default"


# ----------------------------------------------------------------------------- strategies


def premem_scores(run, mem_threshold: float | None = None) -> dict[str, float]:
    """PreMemAcc per train id at the run's last checkpoint with train records (threshold None: the
    run's task's)."""
    from premem_kit.metric import premem_from_arrays
    from premem_kit.analysis.rundata import load_run

    if mem_threshold is None:
        mem_threshold = task_mem_threshold(runs.read_config(run).task)
    rd = load_run(run)  # trained checkpoints only, as the paper
    pm = premem_from_arrays(rd.acc, rd.ppl, threshold_loglog=mem_threshold)
    return {str(i): float(v) for i, v in zip(rd.ids.tolist(), pm[-1])}


def heuristic_score(ex: dict, task: str) -> float:
    """GSM8K: the number of non-empty solution lines; MATH: the level."""
    if task == "math":
        if ex.get("level") is None:
            raise CurationError(f"example {ex['id']}: MATH heuristic needs a level")
        return float(ex["level"])
    return float(sum(1 for line in ex["solution"].splitlines() if line.strip()))


def top_fraction(ids: list[str], scores: dict[str, float], fraction: float) -> list[str]:
    """The ceil(fraction * n) ids with the highest scores; ties keep the order of `ids`."""
    if not 0 < fraction <= 1:
        raise CurationError(f"fraction must be in (0, 1], got {fraction}")
    k = math.ceil(fraction * len(ids) - 1e-9)
    order = sorted(range(len(ids)), key=lambda j: -scores[ids[j]])  # stable: ties in ids order
    keep = set(order[:k])
    return [i for j, i in enumerate(ids) if j in keep]


def _given_scores(scores: dict | None, ids: list[str], none_msg: str, what: str, noun: str,
                  hint: str = "") -> dict:
    """scores restricted to ids; an error when they are absent or miss an id."""
    if scores is None:
        raise CurationError(none_msg)
    missing = [i for i in ids if i not in scores]
    if missing:
        raise CurationError(f"no {what} for {len(missing)} {noun} (first: {missing[0]}){hint}")
    return {i: scores[i] for i in ids}


def select_ids(strategy: str, examples: list[dict], task: str, *, premem: dict | None = None,
               ifd: dict | None = None, t: float = DEFAULT_T, fraction: float | None = None) -> dict:
    """P'(x) for one strategy. examples: the run's train examples (order = tie order); premem / ifd:
    id -> score (needed by those strategies). Returns {selected: [ids], sources: [source ids], scores}."""
    ids = [e["id"] for e in examples]
    frac = fraction if fraction is not None else TOP_FRACTION[task]
    if strategy == "premem":
        scores = _given_scores(premem, ids, "strategy premem needs PreMemAcc scores (train records of the run)",
                               "PreMemAcc", "train examples", "; evaluate the run on all train examples "
                               "(eval_train_examples)")
        sel = [i for i in ids if scores[i] < t]
    elif strategy == "iid":
        scores = {i: 1.0 for i in ids}
        sel = list(ids)
    elif strategy == "ifd":
        scores = _given_scores(ifd, ids, "strategy ifd needs IFD scores", "IFD score", "examples")
        sel = top_fraction(ids, scores, frac)
    elif strategy == "heuristic":
        scores = {e["id"]: heuristic_score(e, task) for e in examples}
        sel = top_fraction(ids, scores, frac)
    else:
        raise CurationError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    by_id = {e["id"]: e for e in examples}
    sources = list(dict.fromkeys(source_of(by_id[i]) for i in sel))
    return {"strategy": strategy, "selected": sel, "sources": sources, "n_examples": len(ids),
            "scores": scores, "t": t if strategy == "premem" else None,
            "fraction": frac if strategy in ("ifd", "heuristic") else None}


# ----------------------------------------------------------------------------- IFD


def bos_prompt(tok) -> str:
    """The prompt for perplexity(y): empty when the tokenizer adds a BOS itself, else its BOS/EOS text."""
    if tok("", add_special_tokens=True)["input_ids"]:
        return ""
    return tok.bos_token or tok.eos_token or ""


def text_key(ex: dict) -> str:
    """A short hash of an example's prompt and target: a cached IFD score is reused only for the same text."""
    return hashlib.sha256((ex["prompt"] + "\x00" + ex["target"]).encode()).hexdigest()[:16]


def _scorer_loader(cfg: dict, checkpoint: Path | None):
    def loader():
        from premem_kit.models import loading as models

        tok = models.load_tokenizer(cfg.model, cfg.tokenizer)
        m = models.load_checkpoint(cfg, checkpoint) if checkpoint else models.load_base_model(cfg)
        return tok, m.eval()
    return loader


def ifd_scores(examples: list[dict], cfg: dict, checkpoint: Path | None, cache_path: Path,
               batch_size: int | None = None, loader=None) -> dict[str, float]:
    """IFD = perplexity(y | x) / perplexity(y) per example with the scorer model (cfg + checkpoint; None =
    base model). Cached in cache_path (JSONL: id, key, ppl_cond, ppl_uncond, ifd); only missing ones are
    scored."""
    cache_path = Path(cache_path)
    cached = {}
    if cache_path.exists():
        for r in read_jsonl(cache_path, ("id", "key", "ifd")):
            cached[(r["id"], r["key"])] = r
    todo = [e for e in examples if (e["id"], text_key(e)) not in cached]
    if todo:
        from premem_kit.models import inference

        tok, model = (loader or _scorer_loader(cfg, checkpoint))()
        kw = dict(batch_size=batch_size or cfg.eval_ppl_batch_size, max_length=cfg.max_length)
        targets = [e["target"] for e in todo]
        cond, _ = inference.perplexities(model, tok, [e["prompt"] for e in todo], targets, desc="IFD ppl(y|x)", **kw)
        unc, _ = inference.perplexities(model, tok, [bos_prompt(tok)] * len(todo), targets, desc="IFD ppl(y)", **kw)
        for e, c, u in zip(todo, cond, unc):
            cached[(e["id"], text_key(e))] = {"id": e["id"], "key": text_key(e), "ppl_cond": c,
                                              "ppl_uncond": u, "ifd": c / u if u else math.nan}
        write_jsonl(cache_path, list(cached.values()))
    return {e["id"]: cached[(e["id"], text_key(e))]["ifd"] for e in examples}


def load_ifd_scorer(run) -> tuple[Config, Path]:
    """(config, last complete checkpoint) of an existing IFD scorer run (--ifd-scorer RUN)."""
    run = Path(run)
    ckpts = runs.complete_checkpoints(run)
    if not ckpts:
        raise CurationError(f"--ifd-scorer {run}: no complete checkpoint")
    return runs.read_config(run), ckpts[-1]


def select_run(run, strategy: str, out, *, t: float = DEFAULT_T, mem_threshold: float | None = None,
               threshold_from=None, fraction: float | None = None, ifd_scorer=None,
               select_from: str = "original") -> dict:
    """`curate.py select`: P'(x) of a trained run, written to `out` (JSON) with the run's path, the
    memorization threshold and its source (see resolve_mem_threshold)."""
    run = Path(run)
    cfg = runs.read_config(run)
    exs = d_train(data_mod.run_train_examples(run, cfg), select_from)
    pm = None
    if strategy == "premem":
        thr, source = resolve_mem_threshold(cfg.task, mem_threshold, threshold_from)
        pm = premem_scores(run, thr)
    ifd = None
    if strategy == "ifd":
        if not ifd_scorer:
            raise CurationError("--strategy ifd needs --ifd-scorer RUN (a model trained on disjoint data)")
        scfg, ck = load_ifd_scorer(ifd_scorer)
        ifd = ifd_scores(exs, scfg, ck, Path(ifd_scorer) / "ifd_scores.jsonl")
    sel = select_ids(strategy, exs, task=cfg.task, premem=pm, ifd=ifd, t=t, fraction=fraction)
    sel.update(run=str(run), select_from=select_from)
    if strategy == "premem":
        sel.update(mem_threshold=thr, mem_threshold_source=source)
    atomic_write_json(out, sel)
    return sel
