"""Rejection-sampling finetuning (RFT) data, Yuan et al. 2023, "Scaling Relationship on Learning
Mathematical Reasoning with Large Language Models": the pieces `curate.py rft` is made of.

    equations / path_key           the annotation list a path is deduplicated by (arith.py checks them)
    levenshtein / dedupe_paths     one path per equation list, the one farthest from the paths kept so far
    SampleCache                    the raw samples of one checkpoint, in a resumable JSONL file
    fill_cache                     sample what a cache lacks, one question batch at a time
    build_rft_rows                 grade, filter, pool several models' samples, dedupe, add the original
    pass_at_k                      the unbiased pass@k estimator (Chen et al. 2021)

Filtering, per sampled path (after cutting the text after the final "#### N" line):
    1. the final answer is correct (grading.grade);
    2. GSM8K: every `<<expression=result>>` annotation is arithmetically right by the --arith-check rule
       (arith.check_annotation; a path without annotations passes this step):
         reference  (default) Yuan et al.'s check: |value(a) - float(b)| < 1e-3 (absolute) for each
                    annotation a=b[=...], later sides ignored; annotations are what their pattern
                    <<([^>]*)>> finds, so an unclosed "<<" is not looked at;
         rounding   (the kit's earlier rule) every side agrees with the first within relative 1e-4 or
                    rounds to it at its shown precision (<<100/3=33.33>> passes), and every "<<" must
                    be closed;
         exact      every side equals the first exactly; every "<<" must be closed.
       arith.py's docstring gives the rules in full.
Dedupe (GSM8K): the key of a path is its list of annotations with all whitespace removed, in order, so
the same equations in different words collapse and the same equations in another order do not. Samples
are visited in order (models in --from order, samples in index order). Two rules (--dedupe):
    reference  (default) Yuan et al.'s collect_rejection_sampling.py: a sample with a new key is kept;
               a sample with a key already kept replaces the path kept for that key when its summed
               character-level Levenshtein distance to the other kept samples is strictly larger than
               the kept path's. The original solution is always written first but is neither a seen key
               nor part of the distances, so a sample with the gold equations is kept as an extra
               reasoning path (a verbatim copy of the original too).
    strict     (the kit's earlier rule) the original solution's key counts as seen: a sample with the
               gold equations is dropped. Keys are taken in order of first appearance; for each key the
               sample kept is the one with the largest summed distance to the paths kept before it (the
               original first), ties to the earliest.
MATH solutions have no annotations: their key is the whole text with whitespace removed (exact-duplicate
removal) and step 2 is skipped; the dedupe rules apply as for GSM8K.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from premem_kit.tasks import grading
from premem_kit.tasks.arith import DEFAULT_ARITH_CHECK, check_annotation
from premem_kit.tasks.data import make_prompt
from premem_kit.core.errors import KitError
from premem_kit.core.files import JsonlError, append_jsonl_durable, read_jsonl_repaired, write_jsonl

# ----------------------------------------------------------------------------- paths and keys

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
REFERENCE_ANNOTATION = re.compile(r"<<([^>]*)>>")  # Yuan et al.'s pattern
DEDUPE_RULES = ("reference", "strict")
DEFAULT_DEDUPE = "reference"


def equations(text: str) -> list[str]:
    """The `<<...>>` annotations of a solution, in order, as written."""
    return _ANNOTATION.findall(text)


def check_path(text: str, task: str = "gsm8k", arith: str = DEFAULT_ARITH_CHECK) -> tuple[bool, str]:
    """(ok, reason): GSM8K: every annotation is arithmetically right by rule `arith` (see the module
    docstring; rounding and exact also need every annotation closed). MATH: always ok."""
    if task != "gsm8k":
        return True, ""
    if arith == "reference":
        eqs = REFERENCE_ANNOTATION.findall(text)
    else:
        eqs = equations(text)
        if text.count("<<") != len(eqs) or text.count(">>") != len(eqs):
            return False, "unclosed or nested <<...>> annotation"
    for eq in eqs:
        ok, why = check_annotation(eq, arith)
        if not ok:
            return False, why
    return True, ""


def path_key(text: str, task: str = "gsm8k") -> tuple:
    """Dedupe key: GSM8K the annotation list with whitespace removed; MATH the whitespace-free text."""
    if task == "gsm8k":
        return tuple(re.sub(r"\s+", "", e) for e in equations(text))
    return (re.sub(r"\s+", "", text),)


def clean_solution(completion: str, task: str = "gsm8k") -> str:
    """A sampled completion as a train solution: cut at the stop string, stripped, and (GSM8K) cut
    after the line that holds the last "####" (text generated after the answer is dropped)."""
    s = grading.stop_at(completion).strip()
    if task == "gsm8k":
        i = s.rfind("####")
        if i >= 0:
            j = s.find("\n", i)
            s = s if j < 0 else s[:j].rstrip()
    return s


# ----------------------------------------------------------------------------- edit distance and dedupe


def levenshtein(a: str, b: str) -> int:
    """Character-level Levenshtein distance (unit insert/delete/substitute), bit-parallel
    (Myers 1999 / Hyyro 2003) on Python integers: O(len(a) * len(b) / word) instead of a Python DP."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    peq: dict[str, int] = {}
    for i, c in enumerate(b):
        peq[c] = peq.get(c, 0) | (1 << i)
    mask = (1 << m) - 1
    high = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for c in a:
        eq = peq.get(c, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = ((ph << 1) | 1) & mask
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
    return score


@dataclass
class Candidate:
    """One candidate reasoning path: its text, dedupe key and provenance."""
    text: str
    key: tuple
    prov: dict = field(default_factory=dict)


def dedupe_paths(candidates: list[Candidate], initial: list[Candidate] = (),
                 rule: str = DEFAULT_DEDUPE) -> list[Candidate]:
    """`initial` (the original solution) followed by one candidate per key, by `rule` ("reference":
    dedupe_reference, "strict": dedupe_strict; see the module docstring)."""
    if rule == "reference":
        return dedupe_reference(candidates, initial)
    if rule == "strict":
        return dedupe_strict(candidates, initial)
    raise ValueError(f"dedupe rule {rule!r}: expected one of {', '.join(DEDUPE_RULES)}")


def dedupe_reference(candidates: list[Candidate], initial: list[Candidate] = ()) -> list[Candidate]:
    """Yuan et al.'s dedupe: `initial` followed by one candidate per key among the candidates.

    Candidates are visited in order; a new key is kept; a candidate whose key is kept already replaces
    the kept one when its summed Levenshtein distance to the other kept candidates (not `initial`) is
    strictly larger than the kept one's. `initial` takes no part: its keys are not seen keys.
    """
    kept: list[Candidate] = []
    where: dict[tuple, int] = {}
    for c in candidates:
        j = where.get(c.key)
        if j is None:
            where[c.key] = len(kept)
            kept.append(c)
            continue
        now = kept[j]
        others = [r.text for r in kept if r.text != now.text]
        if sum(levenshtein(c.text, r) for r in others) > sum(levenshtein(now.text, r) for r in others):
            kept[j] = c
    return list(initial) + kept


def dedupe_strict(candidates: list[Candidate], initial: list[Candidate] = ()) -> list[Candidate]:
    """The kit's earlier dedupe: `initial` (the original solution) followed by one candidate per new key.

    Keys are visited in order of first appearance among the candidates; a key already held by a kept
    path (e.g. the original's) is skipped. Among the candidates sharing a key, the one with the largest
    sum of Levenshtein distances to the paths kept so far is kept (ties: the earliest).
    """
    groups: dict[tuple, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.key, []).append(c)
    kept = list(initial)
    taken = {p.key for p in kept}
    for key, members in groups.items():
        if key in taken:
            continue
        if len(members) == 1 or not kept:
            best = members[0]
        else:
            best, best_d = None, -1
            for m in members:
                d = sum(levenshtein(m.text, k.text) for k in kept)
                if d > best_d:
                    best, best_d = m, d
        kept.append(best)
        taken.add(key)
    return kept


# ----------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"k={k} > n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def k_grid(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n] if n >= 1 else []


# ----------------------------------------------------------------------------- sample cache


class CacheError(KitError, ValueError):
    """A sample cache that is corrupt, or was made with other sampling settings."""


SAMPLING_KEYS = ("temperature", "top_p", "max_new_tokens", "seed")
COMPARE_KEYS = SAMPLING_KEYS + ("model", "step")


class SampleCache:
    """Raw samples of one checkpoint at fixed sampling settings, as JSONL.

    Line 1: {"meta": {...}} (run, step, model, temperature, top_p, max_new_tokens, seed); every later
    line one chunk {"id", "first_index", "seed", "samples": [...]}: samples first_index,
    first_index + 1, ... of question `id`. Chunks are appended (flushed and fsync-ed) after every
    generate call, so an interrupted run keeps all finished batches; a torn last line is dropped on the
    next open (the file is rewritten atomically without it). Samples are i.i.d., so any k uses the first
    k samples of each question and a larger k only samples the missing ones.
    """

    def __init__(self, path, meta: dict):
        self.path = Path(path)
        self.meta = meta
        self._chunks: dict[str, dict[int, list[str]]] = {}
        if self.path.exists():
            self._load()
        else:
            write_jsonl(self.path, [{"meta": meta}])

    def _load(self):
        try:
            rows = read_jsonl_repaired(self.path)
        except JsonlError as e:
            raise CacheError(f"{e} (a corrupt sample cache)") from None
        meta = None
        for row in rows:
            if "meta" in row:
                meta = row["meta"]
                old = {k: meta.get(k) for k in COMPARE_KEYS if k in self.meta}
                new = {k: self.meta[k] for k in COMPARE_KEYS if k in self.meta}
                if old != new:
                    raise CacheError(f"{self.path}: made with other settings {old}, not {new}")
                continue
            self._chunks.setdefault(row["id"], {})[int(row["first_index"])] = list(row["samples"])
        if meta is None:
            raise CacheError(f"{self.path}: no meta line; not a sample cache written by curate.py rft")

    def samples(self, qid: str) -> list[str]:
        """The contiguous samples 0, 1, ... of a question."""
        out: list[str] = []
        chunks = self._chunks.get(qid, {})
        while len(out) in chunks:
            out += chunks[len(out)]
        return out

    def count(self, qid: str) -> int:
        return len(self.samples(qid))

    def append(self, chunks: list[dict]) -> None:
        """Append chunks {"id", "first_index", "seed", "samples"}; durable when this returns."""
        append_jsonl_durable(self.path, chunks)
        for c in chunks:
            self._chunks.setdefault(c["id"], {})[int(c["first_index"])] = list(c["samples"])


def cache_name(run_name: str, step: int, temperature: float, top_p: float, max_new_tokens: int,
               seed: int, top_k: int = 0) -> str:
    """File name of a checkpoint's cache: run folder name, step and the sampling settings (top-k only when
    on, so the caches of the earlier sampler keep their names)."""
    run_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_name) or "run"
    k = f".k{int(top_k)}" if top_k else ""
    return f"{run_name}.step-{int(step):06d}.T{temperature:g}.p{top_p:g}{k}.m{max_new_tokens}.s{seed}.jsonl"


def fill_cache(cache: SampleCache, examples: list[dict], k: int, sample_fn, batch_size: int = 32,
               samples_per_call: int | None = None, seed: int = 0, prompt_of=None, progress=None) -> int:
    """Sample until every example has k samples in the cache; returns the number of new samples.

    sample_fn(prompts, n, seed) -> list (per prompt) of n completions. Questions with the same number of
    cached samples are batched together, batch_size prompts and samples_per_call (default k) samples
    per prompt per call; the seed of a call depends on `seed`, the first sample index and the batch's
    first id only, so an interrupted and resumed run draws the same samples as an uninterrupted one.
    """
    prompt_of = prompt_of or (lambda e: make_prompt(e["question"]))
    spc = max(1, samples_per_call or k)
    by_have: dict[int, list[dict]] = {}
    for e in examples:
        h = cache.count(e["id"])
        if h < k:
            by_have.setdefault(h, []).append(e)
    new = 0
    for have0, exs in sorted(by_have.items()):
        for i in range(0, len(exs), batch_size):
            batch = exs[i:i + batch_size]
            have = have0
            while have < k:
                n = min(spc, k - have)
                s = zlib.crc32(f"{seed}|{have}|{batch[0]['id']}".encode()) & 0x7FFFFFFF
                outs = sample_fn([prompt_of(e) for e in batch], n, s)
                cache.append([{"id": e["id"], "first_index": have, "seed": s, "samples": list(o)}
                              for e, o in zip(batch, outs)])
                have += n
                new += n * len(batch)
                if progress:
                    progress(len(batch) * n)
    return new


# ----------------------------------------------------------------------------- building the data set


@dataclass
class Source:
    """One model's samples: provenance and id -> samples (only the first k are used)."""
    name: str
    samples: dict[str, list[str]]
    prov: dict = field(default_factory=dict)  # model, run, step


def _graded(task, ex, texts, arith: str):
    """Per sample: (clean text, correct, valid equations by rule `arith`, key)."""
    out = []
    for t in texts:
        sol = clean_solution(t, task)
        correct = bool(sol) and grading.grade(task, sol, ex["reference"])[1] == "correct"
        valid = correct and check_path(sol, task, arith)[0]
        out.append((sol, correct, valid, path_key(sol, task) if valid else None))
    return out


class _Tally:
    """The statistics build_rft_rows reports, gathered question by question."""

    def __init__(self, sources: list[Source], k: int, dedupe: str):
        self.dedupe = dedupe
        self.filter = {"samples": 0, "correct": 0, "correct_valid_equations": 0, "wrong_equations": 0}
        self.per_source = {s.name: {"n": [], "c": []} for s in sources}
        self.distinct_vs_k = {kk: [] for kk in k_grid(k)}
        self.per_question: list[int] = []

    def add_source(self, name: str, graded: list) -> None:
        self.per_source[name]["n"].append(len(graded))
        self.per_source[name]["c"].append(sum(x[1] for x in graded))
        for _, correct, valid, _ in graded:
            self.filter["samples"] += 1
            self.filter["correct"] += correct
            self.filter["correct_valid_equations"] += valid
            self.filter["wrong_equations"] += correct and not valid

    def add_distinct(self, initial: list[Candidate], graded_by_source: list[list]) -> None:
        """Distinct paths if only the first kk samples of each source had been drawn (reference dedupe:
        the original plus the samples' keys; strict: the original's key is one of the keys)."""
        for kk, counts in self.distinct_vs_k.items():
            keys = set()
            for g in graded_by_source:
                keys |= {x[3] for x in g[:kk] if x[2]}
            if self.dedupe == "strict":
                counts.append(len(keys | {p.key for p in initial}))
            else:
                counts.append(len(initial) + len(keys))


def _question_paths(ex: dict, sources: list[Source], task: str, k: int, add_original: bool,
                    tally: _Tally, arith: str) -> list[Candidate]:
    """The kept paths of one question: the original, then the deduplicated correct samples."""
    orig_text = ex["solution"].strip()
    initial = [Candidate(orig_text, path_key(orig_text, task), {"origin": "original"})] if add_original else []
    cands: list[Candidate] = []
    graded_by_source = []
    for si, s in enumerate(sources):
        texts = s.samples.get(ex["id"], [])[:k]
        if len(texts) < k:
            raise CacheError(f"source {s.name}: {ex['id']} has {len(texts)} samples, {k} needed")
        g = _graded(task, ex, texts, arith)
        graded_by_source.append(g)
        tally.add_source(s.name, g)
        cands += [Candidate(sol, key, {"origin": "sample", **s.prov, "sample_index": j, "src": si})
                  for j, (sol, _, valid, key) in enumerate(g) if valid]
    tally.add_distinct(initial, graded_by_source)
    kept = dedupe_paths(cands, initial, tally.dedupe)
    tally.per_question.append(len(kept))
    return kept


def _row(ex: dict, p: Candidate) -> dict:
    origin = p.prov.get("origin")
    # ids: <source id>/rft/original and <source id>/rft/m<source number>-<sample index>
    rid = f"{ex['id']}/rft/original" if origin == "original" else (
        f"{ex['id']}/rft/m{p.prov['src']}-{p.prov['sample_index']}")
    return {"question": ex["question"], "answer": p.text, "id": rid, "source_id": ex["id"], "origin": origin,
            "model": p.prov.get("model"), "run": p.prov.get("run"), "step": p.prov.get("step"),
            "sample_index": p.prov.get("sample_index")}


def _mean_pass_at_k(ns: list[int], cs: list[int]) -> dict:
    n = min(ns) if ns else 0
    return {str(kk): sum(pass_at_k(a, b, kk) for a, b in zip(ns, cs)) / len(ns) for kk in k_grid(n)}


def _stats(tally: _Tally, sources: list[Source], n_questions: int, n_rows: int, k: int,
           add_original: bool) -> dict:
    per_q, ps = tally.per_question, tally.per_source
    dist: dict[str, int] = {}
    for x in per_q:
        dist[str(x)] = dist.get(str(x), 0) + 1
    nq = max(n_questions, 1)
    stats = {
        "dedupe": tally.dedupe,
        "questions": n_questions,
        "rows": n_rows,
        "k": k,
        "n_sources": len(sources),
        "filter": tally.filter,
        "distinct_paths_per_question": {
            "mean": sum(per_q) / nq,
            "mean_sampled_only": (sum(per_q) - (n_questions if add_original else 0)) / nq,
            "min": min(per_q) if per_q else 0, "max": max(per_q) if per_q else 0,
            "distribution": dict(sorted(dist.items(), key=lambda kv: int(kv[0]))),
            "includes_original": add_original,
        },
        "distinct_paths_vs_k": {str(kk): sum(v) / nq for kk, v in tally.distinct_vs_k.items()},
        "pass_at_k": {s.name: _mean_pass_at_k(ps[s.name]["n"], ps[s.name]["c"]) for s in sources},
        "accuracy": {s.name: sum(ps[s.name]["c"]) / max(sum(ps[s.name]["n"]), 1) for s in sources},
    }
    if len(sources) > 1:
        all_n = [sum(v["n"][i] for v in ps.values()) for i in range(n_questions)]
        all_c = [sum(v["c"][i] for v in ps.values()) for i in range(n_questions)]
        stats["pass_at_k"]["pooled"] = _mean_pass_at_k(all_n, all_c)
    return stats


def build_rft_rows(examples: list[dict], sources: list[Source], task: str, k: int, add_original: bool = True,
                   dedupe: str = DEFAULT_DEDUPE, arith_check: str = DEFAULT_ARITH_CHECK) -> tuple[list[dict], dict]:
    """The RFT data set (GSM8K schema rows) and its statistics.

    For each example, the first k samples of every source are pooled (union over models, in source
    order), filtered (correct answer, right arithmetic by rule `arith_check`) and deduplicated
    (dedupe_paths by rule `dedupe`) after the original solution. Rows: question, answer, id, source_id,
    origin ("original" | "sample"), model, run, step, sample_index.
    """
    tally = _Tally(sources, k, dedupe)
    rows = [_row(ex, p) for ex in examples
            for p in _question_paths(ex, sources, task, k, add_original, tally, arith_check)]
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("RFT rows have duplicate ids (two sources with the same name?)")
    stats = _stats(tally, sources, len(examples), len(rows), k, add_original)
    stats["arith_check"] = arith_check
    return rows, stats
