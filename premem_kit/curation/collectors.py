"""Algorithm 1's collectors: N' new examples derived from P'(x) (`curate.py collect`, algorithm1.py).

pool       a JSONL of candidates, each naming the train example it derives from: `source_id` (an id such
           as gsm8k/train/42) or `source_question` / `original_question` (the original question text,
           e.g. MetaMathQA's GSM_Rephrased / MATH_Rephrased rows: query, response, original_question).
           Text keys: question/answer (GSM8K), problem/solution (MATH) or query/response (MetaMathQA; a
           trailing "The answer is: X" becomes "#### X" for GSM8K). N' candidates whose source is in
           P'(x) are drawn without replacement, never one drawn in an earlier round. `--pool holdout`
           is the offline case: the train split minus the seed set, each held-out example's source being
           its nearest seed example (TF-IDF cosine of the questions).
rephrase   a chat model (chat.py: an OpenAI-compatible endpoint or a local HF model) rephrases a chosen
           question and solves it in the dataset's format; kept only when its final answer equals the
           source's. Every response is cached on disk (chat.ResponseCache, keyed by a hash of the chat
           model, messages, temperature and attempt), so a rerun makes no request.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from premem_kit.tasks import data as data_mod
from premem_kit.tasks import grading
from premem_kit.curation.chat import ResponseCache
from premem_kit.curation.vocabulary import COLLECTORS, CurationError, text_keys, to_row
from premem_kit.core.files import JsonlError, read_jsonl
from premem_kit.core.config import DataSettings

log = logging.getLogger("curation")

# ----------------------------------------------------------------------------- pool collector

_META_ANS = re.compile(r"The answer is:?\s*(.+?)\s*$", re.S)


def _normq(s: str) -> str:
    return " ".join(s.split()).lower()


def _pool_text(r: dict, task: str, where: str) -> tuple[str, str]:
    """(question, solution) of a pool row in the dataset's keys or MetaMathQA's query/response."""
    qk, sk = text_keys(task)
    if qk in r and sk in r:
        return r[qk], r[sk]
    if "query" in r and "response" in r:
        q, sol = r["query"], r["response"]
        m = _META_ANS.search(sol)
        if m and task == "gsm8k" and "####" not in sol:
            sol = sol[: m.start()].rstrip() + f"\n#### {m.group(1).rstrip('.').strip()}"
        elif m and task == "math" and "\\boxed" not in sol:
            sol = sol[: m.start()].rstrip() + f"\nThe answer is $\\boxed{{{m.group(1).strip()}}}$."
        return q, sol
    raise CurationError(f"{where}: expected keys {qk}/{sk} (or query/response), got {sorted(r)}")


def _pool_source(r: dict, where: str, ids: set, by_question: dict) -> str | None:
    """The train id a pool row derives from; None when its source question is not in the split."""
    if r.get("source_id") is not None:
        src = str(r["source_id"])
        if src not in ids:
            raise CurationError(f"{where}: source_id {src!r} is not a train example id (e.g. {next(iter(ids))})")
        return src
    if r.get("source_question") or r.get("original_question"):
        return by_question.get(_normq(r.get("source_question") or r.get("original_question")))
    raise CurationError(f"{where}: a pool row needs source_id or source_question (or original_question) "
                        f"naming the train example it derives from")


def load_pool(path, task: str, train_split: list[dict]) -> list[dict]:
    """Candidate rows from a JSONL pool; each gets id, source_id and the dataset's text keys."""
    path = Path(path)
    if not path.exists():
        raise CurationError(f"pool file {path} does not exist")
    try:
        numbered = read_jsonl(path, numbered=True)
    except JsonlError as e:
        raise CurationError(str(e)) from None
    ids = {e["id"] for e in train_split}
    by_question = {_normq(e["question"]): e["id"] for e in train_split}
    qk, sk = text_keys(task)
    out, unmatched, seen = [], 0, set()
    for lineno, r in numbered:
        where = f"{path}, line {lineno}"
        q, sol = _pool_text(r, task, where)
        src = _pool_source(r, where, ids, by_question)
        if src is None:
            unmatched += 1
            continue
        cid = str(r.get("id") or f"{path.stem}/{lineno}")
        if cid in seen:
            raise CurationError(f"{where}: duplicate candidate id {cid!r}")
        seen.add(cid)
        row = {"id": cid, "source_id": src, qk: q, sk: sol}
        if task == "math" and r.get("level") is not None:
            row["level"] = r["level"]
        out.append(row)
    if unmatched:
        log.warning("%s: %d rows name a source question that is not in the train split; skipped", path, unmatched)
    if not out:
        raise CurationError(f"{path}: no usable candidate (rows whose source is a train example)")
    return out


def tfidf(texts: list[str], vocab: dict | None = None, idf=None):
    """Row-normalized TF-IDF vectors of texts (words and numbers); fit vocab and idf unless given."""
    toks = [re.findall(r"[a-z]+|\d+", t.lower()) for t in texts]
    if vocab is None:
        df = Counter(w for ts in toks for w in set(ts))
        vocab = {w: i for i, w in enumerate(sorted(df))}
        idf = np.log((1 + len(texts)) / (1 + np.array([df[w] for w in sorted(df)]))) + 1
    m = np.zeros((len(texts), len(vocab)), dtype=np.float32)
    for r, ts in enumerate(toks):
        for w, c in Counter(ts).items():
            if w in vocab:
                m[r, vocab[w]] = c
    m *= idf[None, :].astype(np.float32)
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    return m, vocab, idf


def holdout_pool(split: list[dict], seed_ids: list[str], task: str, size: int | None = None,
                 seed: int = 0) -> list[dict]:
    """The offline pool: train-split examples outside the seed set (a seeded sample of `size`), each with
    source_id = its nearest seed example by TF-IDF cosine of the questions."""
    seed_set = set(seed_ids)
    seeds = [e for e in split if e["id"] in seed_set]
    rest = [e for e in split if e["id"] not in seed_set]
    if not seeds or not rest:
        raise CurationError(f"holdout pool: {len(seeds)} seed and {len(rest)} held-out examples; need both (the "
                            "pool is the train split minus D_train: with a full-split recipe give a pool file, "
                            "or train on part of the split, e.g. subset=quarter)")
    keep = set(data_mod.sample_ids([e["id"] for e in rest], size, seed))
    rest = [e for e in rest if e["id"] in keep]
    S, vocab, idf = tfidf([e["question"] for e in seeds])
    out = []
    for s in range(0, len(rest), 512):  # 512 at a time: the similarity matrix stays small
        chunk = rest[s:s + 512]
        P, _, _ = tfidf([e["question"] for e in chunk], vocab, idf)
        near = (P @ S.T).argmax(axis=1)
        for e, j in zip(chunk, near):
            out.append({**to_row({**e, "meta": {}}, task), "source_id": seeds[int(j)]["id"]})
    return out


def pool_collect(pool: list[dict], sources, n: int, used=(), seed: int = 0) -> tuple[list[dict], dict]:
    """N' candidates whose source_id is in `sources`, drawn uniformly without replacement, never one whose
    id is in `used`. Returns (rows, stats); stats['shortfall'] > 0 when fewer were eligible."""
    src, used = set(sources), set(used)
    eligible = [r for r in pool if r["source_id"] in src and r["id"] not in used]
    k = min(n, len(eligible))
    rows = random.Random(seed).sample(eligible, k)
    if k < n:
        log.warning("pool: only %d unused candidates derive from P'(x); wanted %d", k, n)
    return rows, {"eligible": len(eligible), "drawn": k, "wanted": n, "shortfall": n - k}


# ----------------------------------------------------------------------------- rephrase collector

REPHRASE_SYSTEM = "You rewrite math problems in new words and solve them carefully."
REPHRASE_USER = (
    "Rephrase the following math problem so that it asks the same thing in different words, keeping every "
    "quantity and the final answer unchanged. Then solve the rephrased problem step by step.\n\n"
    "Problem:\n{question}\n\nReply exactly in this format:\nQuestion: <the rephrased problem>\n"
    "Solution: <the step-by-step solution, {ending}>")
ENDINGS = {"gsm8k": "ending with a last line '#### <final number>'",
           "math": "with the final answer in \\boxed{{...}}"}
_QS = re.compile(r"Question:\s*(.*?)\n\s*Solution:\s*(.*)", re.S)


def rephrase_messages(question: str, task: str) -> list[dict]:
    """The chat messages asking to rephrase and solve one question."""
    ending = ENDINGS[task].replace("{{", "{").replace("}}", "}")
    return [{"role": "system", "content": REPHRASE_SYSTEM},
            {"role": "user", "content": REPHRASE_USER.format(question=question, ending=ending)}]


def parse_rephrase(text: str) -> tuple[str, str] | None:
    """(question, solution) of a reply in the asked format, else None."""
    m = _QS.search(text or "")
    if not m:
        return None
    q, sol = m.group(1).strip(), m.group(2).strip()
    return (q, sol) if q and sol else None


def _ask(chat, cache: ResponseCache, src: dict, attempt: int, task: str, st: Counter) -> tuple[str, str]:
    """(response text, request key) of attempt `attempt` at a source, from the cache when it has it."""
    msgs = rephrase_messages(src["question"], task)
    req = {"chat": chat.ident, "messages": msgs, "temperature": getattr(chat, "temperature", None),
           "attempt": attempt, "source_id": src["id"]}
    key = hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()
    text = cache.get(key)
    if text is None:
        text = chat(msgs)
        cache.put(key, req, text)
        st["requests"] += 1
    else:
        st["cached"] += 1
    return text, key


def _accepted_row(text: str, src: dict, attempt: int, key: str, task: str, id_prefix: str,
                  st: Counter) -> dict | None:
    """The new example of a response, or None (counted) when its format or final answer is wrong."""
    parsed = parse_rephrase(text)
    if parsed is None:
        st["rejected_format"] += 1
        return None
    q, sol = parsed
    if grading.grade(task, sol, src["reference"])[1] != "correct":
        st["rejected_wrong"] += 1
        return None
    qk, sk = text_keys(task)
    row = {"id": f"{id_prefix}/{src['id']}/{attempt}", "source_id": src["id"], qk: q, sk: sol, "request_key": key}
    if task == "math" and src.get("level") is not None:
        row["level"] = f"Level {src['level']}"
    st["accepted"] += 1
    return row


def rephrase_collect(chat, cache: ResponseCache, sources: list[dict], n: int, task: str, *, seed: int = 0,
                     max_attempts: int | None = None, id_prefix: str = "rephrase", progress=True):
    """Up to n accepted rephrasings of the source examples (dicts with id, question, reference), visiting
    sources in a seeded order (cycling; attempt a of a source is its a-th request). A response is kept only
    when its solution's final answer equals the source's reference. Cached responses cost no request."""
    from tqdm.auto import tqdm

    if not sources:
        return [], {"requests": 0, "cached": 0, "accepted": 0, "rejected_wrong": 0, "rejected_format": 0}
    order = list(sources)
    random.Random(seed).shuffle(order)
    max_attempts = max_attempts or 4 * n
    rows, st, visits = [], Counter(), Counter()
    bar = tqdm(total=n, desc="rephrase", unit="ex", disable=not progress, dynamic_ncols=True)
    for k in range(max_attempts):
        if len(rows) >= n:
            break
        src = order[k % len(order)]
        attempt = visits[src["id"]]
        visits[src["id"]] += 1
        text, key = _ask(chat, cache, src, attempt, task, st)
        row = _accepted_row(text, src, attempt, key, task, id_prefix, st)
        if row is not None:
            rows.append(row)
            bar.update(1)
    bar.close()
    st["attempts"] = sum(visits.values())
    st["shortfall"] = n - len(rows)
    return rows, dict(st)


# ----------------------------------------------------------------------------- collector options


@dataclass
class CollectOptions:
    """The collector settings of `curate.py collect / algo1 / fig8` (their command-line options)."""

    collector: str = "pool"
    pool: str | None = None           # a JSONL file or "holdout"
    pool_size: int | None = None      # holdout: a seeded sample of this many held-out examples
    rephrase_model: str | None = None
    rephrase_hf: str | None = None
    rpm: float = 60
    max_retries: int = 5
    rephrase_temperature: float = 0.7

    def chat(self):
        """The rephraser (None for the pool collector)."""
        from premem_kit.curation.chat import HFChat, OpenAIChat

        if self.collector not in COLLECTORS:
            raise CurationError(f"unknown collector {self.collector!r}; expected one of {', '.join(COLLECTORS)}")
        if self.collector != "rephrase":
            return None
        if self.rephrase_hf:
            return HFChat(self.rephrase_hf, temperature=self.rephrase_temperature)
        return OpenAIChat(model=self.rephrase_model, rpm=self.rpm, max_retries=self.max_retries,
                          temperature=self.rephrase_temperature)

    def load_pool(self, cfg: DataSettings, seed_ids: list[str]) -> tuple[list[dict] | None, str]:
        """(candidate rows, pool name for algo1.json); (None, "") for the rephrase collector."""
        if self.collector != "pool":
            return None, ""
        if not self.pool:
            raise CurationError("--collector pool needs --pool FILE.jsonl or --pool holdout")
        split = data_mod.load_split(cfg, "train")
        if self.pool == "holdout":
            return holdout_pool(split, seed_ids, cfg.task, self.pool_size, cfg.seed), f"holdout:{self.pool_size}"
        return load_pool(self.pool, cfg.task, split), str(self.pool)
