"""Algorithm 1 data curation (Kang et al., ICML 2025, section 6 / appendix C) and the Figure 8 experiment.

Choose P'(x), the train examples new data should resemble, from a trained run by one of four strategies;
collect N' new examples derived from P'(x) with a collector; repeat for n rounds (Algorithm 1); compare the
strategies' test accuracy against the number of training examples (Figure 8).

Strategies (`select_ids`)
-------------------------
premem     train examples whose PreMemAcc at the run's last checkpoint is below t (default 0.75). PreMemAcc
           is premem.py's metric over every checkpoint with train records (memorization threshold
           --mem-threshold, loglog convention, default -2.3).
iid        every train example (P'(x) = D_train; new data is drawn uniformly).
ifd        Instruction-Following Difficulty = perplexity(y | x) / perplexity(y) from a scorer model trained
           briefly on data disjoint from the scored set (the paper: the test split, 2 epochs); the top 50%
           (GSM8K) / 75% (MATH). perplexity(y) is the target's perplexity after the tokenizer's BOS alone
           (an empty prompt). Ties keep the run's train order.
heuristic  GSM8K: number of non-empty lines of the solution; MATH: the level. Top 50% / 75%, ties in the
           run's train order.

A run may train on curated rows (train_file with provenance): their `source_id` maps them back to the
original train example, so choosing a curated row makes its source eligible.

Collectors
----------
pool       a JSONL of candidates, each naming the train example it derives from: `source_id` (an id such
           as gsm8k/train/42) or `source_question` / `original_question` (the original question text,
           e.g. MetaMathQA's GSM_Rephrased / MATH_Rephrased rows: query, response, original_question).
           Text keys: question/answer (GSM8K), problem/solution (MATH) or query/response (MetaMathQA; a
           trailing "The answer is: X" becomes "#### X" for GSM8K). N' candidates whose source is in
           P'(x) are drawn without replacement, never one drawn in an earlier round. `--pool holdout`
           is the offline case: the train split minus the seed set, each held-out example's source being
           its nearest seed example (TF-IDF cosine of the questions).
rephrase   an OpenAI-compatible chat endpoint (OPENAI_BASE_URL, default https://api.openai.com/v1;
           OPENAI_API_KEY; model from --rephrase-model or CURATE_REPHRASE_MODEL) or a local HF model
           (--rephrase-hf MODEL) rephrases a chosen question and solves it in the dataset's format; kept
           only when its final answer equals the source's. Every response is cached on disk (JSONL keyed
           by a hash of endpoint, model, messages, temperature and attempt), so a rerun makes no request;
           HTTP 429/5xx and network errors are retried with exponential backoff (Retry-After honoured) and
           requests are spaced to --rpm per minute.

Algorithm 1 (`run_algorithm1`), OUT layout
------------------------------------------
    OUT/algo1.json                 settings (a rerun with other settings is an error)
    OUT/round-K/train.jsonl        D_train + D'_train used in round K (provenance: source_id, round,
                                   strategy, collector, candidate_id); the seed rows keep their ids
    OUT/round-K/run/               train.py run folder (checkpoints, records; round 0 may be shared)
    OUT/round-K/selection.json     P'_{K+1}: chosen ids, their scores, eligible sources
    OUT/round-K/collected.jsonl    D'_{K+1}: the N'_{K+1} new examples
    OUT/round-K/done.json          round marker: test accuracy, sizes; a rerun skips done rounds
    OUT/curated.jsonl              every collected example (D'_train) with provenance
    OUT/summary.json               per round: n_train, test accuracy, selected, collected
Round K trains on D_train + D'_1..D'_K, evaluates (train records at every checkpoint for premem, test at
the last checkpoint), chooses P'_{K+1} and collects D'_{K+1}; the last round (K = rounds) only trains
and evaluates. Resumable at round granularity; inside a round train.py and evaluate.py resume themselves
and the rephrase cache avoids repeated requests.

Figure 8 (`run_fig8`): one Algorithm 1 per strategy in OUT/<strategy>/, sharing round 0 (OUT/round-0/);
writes OUT/fig8.json (points and the sample-efficiency ratio) and OUT/fig8.{png,pdf}. The ratio is the
number of examples iid needs over the number premem needs for the same test accuracy, both curves made
monotone (running max) and interpolated linearly in log size; reported at premem's final accuracy and as
the geometric mean over premem's points inside iid's accuracy range.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

import config as config_mod
import data as data_mod
import grading
import records
from records import atomic_write_json, atomic_write_text

log = logging.getLogger("curation")

STRATEGIES = ("premem", "iid", "ifd", "heuristic")
COLLECTORS = ("pool", "rephrase")
DEFAULT_T = 0.75
DEFAULT_MEM_THRESHOLD = -2.3
TOP_FRACTION = {"gsm8k": 0.5, "math": 0.75}


class CurationError(ValueError):
    """Bad input; the message names the file, line or option."""


# ----------------------------------------------------------------------------- rows and examples


def source_of(ex: dict) -> str:
    """The original train example an example derives from (itself for an original)."""
    return (ex.get("meta") or {}).get("source_id") or ex.get("source_id") or ex["id"]


def to_row(ex: dict, task: str, **prov) -> dict:
    """An example as a JSONL row in the dataset's schema (+ id and provenance) that train.py accepts."""
    if task == "gsm8k":
        row = {"id": ex["id"], "question": ex["question"], "answer": ex["solution"]}
    else:
        row = {"id": ex["id"], "problem": ex["question"], "solution": ex["solution"]}
        for k in ("level", "type"):
            if ex.get(k) is not None:
                row[k] = f"Level {ex[k]}" if k == "level" and isinstance(ex[k], int) else ex[k]
    meta = {k: v for k, v in (ex.get("meta") or {}).items() if k not in row}
    row.update(meta)
    row.update(prov)
    return row


def write_jsonl(path, rows) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def run_config(run: Path) -> dict:
    cfg = records.read_run_config(run)
    for k, v in cfg.items():
        config_mod.check_value(k, v, str(run / "config.yaml"))
    return {**{k: v[0] for k, v in config_mod.DEFAULTS.items()}, **cfg}


def run_train_examples(run: Path, cfg: dict | None = None) -> list[dict]:
    """The examples a run trained on (subset_ids.json order), originals and curated rows alike."""
    run = Path(run)
    cfg = cfg or run_config(run)
    ids_path = run / "subset_ids.json"
    if not ids_path.exists():
        raise CurationError(f"{ids_path} missing: train.py writes it when training starts")
    pool = data_mod.load_split(cfg["task"], cfg["data"], "train", cfg["data_config"], cfg["math_levels"])
    if cfg["train_file"]:
        pool += data_mod.load_extra_file(cfg["train_file"], cfg["task"])
    by_id = {e["id"]: e for e in pool}
    out = []
    for i in json.loads(ids_path.read_text()):
        if i not in by_id:
            raise CurationError(f"{ids_path}: id {i} is not in the run's data")
        out.append(by_id[i])
    return out


# ----------------------------------------------------------------------------- strategies


def premem_scores(run, mem_threshold: float = DEFAULT_MEM_THRESHOLD) -> dict[str, float]:
    """PreMemAcc per train id at the run's last checkpoint with train records."""
    import premem

    rd = premem.load_run(run, include_step0=True)
    pm = premem.premem_from_arrays(rd.acc, rd.ppl, threshold_loglog=mem_threshold)
    return {str(i): float(v) for i, v in zip(rd.ids.tolist(), pm[-1])}


def heuristic_score(ex: dict, task: str) -> float:
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


def select_ids(strategy: str, examples: list[dict], task: str, *, premem: dict | None = None,
               ifd: dict | None = None, t: float = DEFAULT_T, fraction: float | None = None) -> dict:
    """P'(x) for one strategy. examples: the run's train examples (order = tie order); premem / ifd:
    id -> score (needed by those strategies). Returns {selected: [ids], sources: [source ids], scores}."""
    ids = [e["id"] for e in examples]
    frac = fraction if fraction is not None else TOP_FRACTION[task]
    if strategy == "premem":
        if premem is None:
            raise CurationError("strategy premem needs PreMemAcc scores (train records of the run)")
        missing = [i for i in ids if i not in premem]
        if missing:
            raise CurationError(f"no PreMemAcc for {len(missing)} train examples (first: {missing[0]}); "
                                f"evaluate the run on all train examples (--train-examples / eval_train_examples)")
        scores = {i: premem[i] for i in ids}
        sel = [i for i in ids if scores[i] < t]
    elif strategy == "iid":
        scores = {i: 1.0 for i in ids}
        sel = list(ids)
    elif strategy == "ifd":
        if ifd is None:
            raise CurationError("strategy ifd needs IFD scores")
        missing = [i for i in ids if i not in ifd]
        if missing:
            raise CurationError(f"no IFD score for {len(missing)} examples (first: {missing[0]})")
        scores = {i: ifd[i] for i in ids}
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


def _bos_prompt(tok) -> str:
    """The prompt for perplexity(y): empty when the tokenizer adds a BOS itself, else its BOS/EOS text."""
    if tok("", add_special_tokens=True)["input_ids"]:
        return ""
    return tok.bos_token or tok.eos_token or ""


def _text_key(ex: dict) -> str:
    return hashlib.sha256((ex["prompt"] + "\x00" + ex["target"]).encode()).hexdigest()[:16]


def ifd_scores(examples: list[dict], cfg: dict, checkpoint: Path | None, cache_path: Path,
               batch_size: int | None = None, loader=None) -> dict[str, float]:
    """IFD = perplexity(y | x) / perplexity(y) per example with the scorer model (cfg + checkpoint; None =
    base model). Cached in cache_path (JSONL: id, key, ppl_cond, ppl_uncond, ifd); only missing ones are
    scored."""
    cache_path = Path(cache_path)
    cached = {}
    if cache_path.exists():
        for r in data_mod.read_jsonl(cache_path, ("id", "key", "ifd")):
            cached[(r["id"], r["key"])] = r
    todo = [e for e in examples if (e["id"], _text_key(e)) not in cached]
    if todo:
        import inference

        if loader is None:
            import models

            def loader():
                tok = models.load_tokenizer(cfg["model"], cfg["tokenizer"])
                m = models.load_checkpoint(cfg, checkpoint) if checkpoint else models.load_base_model(cfg)
                return tok, m.eval()
        tok, model = loader()
        bs = batch_size or cfg["eval_ppl_batch_size"]
        cond, _ = inference.perplexities(model, tok, [e["prompt"] for e in todo], [e["target"] for e in todo],
                                         batch_size=bs, max_length=cfg["max_length"], desc="IFD ppl(y|x)")
        bos = _bos_prompt(tok)
        unc, _ = inference.perplexities(model, tok, [bos] * len(todo), [e["target"] for e in todo],
                                        batch_size=bs, max_length=cfg["max_length"], desc="IFD ppl(y)")
        for e, c, u in zip(todo, cond, unc):
            cached[(e["id"], _text_key(e))] = {"id": e["id"], "key": _text_key(e), "ppl_cond": c,
                                               "ppl_uncond": u, "ifd": c / u if u else math.nan}
        write_jsonl(cache_path, list(cached.values()))
    return {e["id"]: cached[(e["id"], _text_key(e))]["ifd"] for e in examples}


def test_split_as_train_file(cfg: dict, path: Path, n: int | None = None) -> Path:
    """The test split (its first n examples) written as a train_file (for the IFD scorer, trained on data
    disjoint from the scored train examples)."""
    exs = data_mod.load_split(cfg["task"], cfg["data"], "test", cfg["data_config"], cfg["math_levels"])
    exs = exs[:n] if n else exs
    if not path.exists():
        write_jsonl(path, [to_row(e, cfg["task"]) for e in exs])
    return path


# ----------------------------------------------------------------------------- pool collector


_META_ANS = re.compile(r"The answer is:?\s*(.+?)\s*$", re.S)


def _normq(s: str) -> str:
    return " ".join(s.split()).lower()


def load_pool(path, task: str, train_split: list[dict]) -> list[dict]:
    """Candidate rows from a JSONL pool; each gets id, source_id and the dataset's text keys."""
    path = Path(path)
    if not path.exists():
        raise CurationError(f"pool file {path} does not exist")
    by_id = {e["id"] for e in train_split}
    by_q = {_normq(e["question"]): e["id"] for e in train_split}
    qk, sk = ("question", "answer") if task == "gsm8k" else ("problem", "solution")
    out, unmatched, seen = [], 0, set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise CurationError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(r, dict):
                raise CurationError(f"{path}, line {lineno}: expected a JSON object")
            if qk in r and sk in r:
                q, sol = r[qk], r[sk]
            elif "query" in r and "response" in r:
                q, sol = r["query"], r["response"]
                m = _META_ANS.search(sol)
                if m and task == "gsm8k" and "####" not in sol:
                    sol = sol[: m.start()].rstrip() + f"\n#### {m.group(1).rstrip('.').strip()}"
                elif m and task == "math" and "\\boxed" not in sol:
                    sol = sol[: m.start()].rstrip() + f"\nThe answer is $\\boxed{{{m.group(1).strip()}}}$."
            else:
                raise CurationError(f"{path}, line {lineno}: expected keys {qk}/{sk} (or query/response), "
                                    f"got {sorted(r)}")
            if r.get("source_id") is not None:
                src = str(r["source_id"])
                if src not in by_id:
                    raise CurationError(f"{path}, line {lineno}: source_id {src!r} is not a train example id "
                                        f"(e.g. {next(iter(by_id))})")
            elif r.get("source_question") or r.get("original_question"):
                src = by_q.get(_normq(r.get("source_question") or r.get("original_question")))
                if src is None:
                    unmatched += 1
                    continue
            else:
                raise CurationError(f"{path}, line {lineno}: a pool row needs source_id or source_question "
                                    f"(or original_question) naming the train example it derives from")
            cid = str(r.get("id") or f"{path.stem}/{lineno}")
            if cid in seen:
                raise CurationError(f"{path}, line {lineno}: duplicate candidate id {cid!r}")
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


def _tfidf(texts: list[str], vocab: dict | None = None, idf=None):
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
        raise CurationError(f"holdout pool: {len(seeds)} seed and {len(rest)} held-out examples; need both")
    keep = set(data_mod.sample_ids([e["id"] for e in rest], size, seed))
    rest = [e for e in rest if e["id"] in keep]
    S, vocab, idf = _tfidf([e["question"] for e in seeds])
    out = []
    for s in range(0, len(rest), 512):
        chunk = rest[s:s + 512]
        P, _, _ = _tfidf([e["question"] for e in chunk], vocab, idf)
        near = (P @ S.T).argmax(axis=1)
        for e, j in zip(chunk, near):
            ex = dict(e)
            ex["meta"] = {}
            out.append({**to_row(ex, task), "source_id": seeds[int(j)]["id"]})
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
    return [{"role": "system", "content": REPHRASE_SYSTEM},
            {"role": "user", "content": REPHRASE_USER.format(question=question, ending=ENDINGS[task]
                                                             .replace("{{", "{").replace("}}", "}"))}]


def parse_rephrase(text: str) -> tuple[str, str] | None:
    m = _QS.search(text or "")
    if not m:
        return None
    q, sol = m.group(1).strip(), m.group(2).strip()
    return (q, sol) if q and sol else None


class ResponseCache:
    """Append-only JSONL of responses keyed by request hash; a torn last line is ignored."""

    def __init__(self, path):
        self.path = Path(path)
        self.data = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    r = json.loads(line)
                    self.data[r["key"]] = r["response"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue

    def get(self, key):
        return self.data.get(key)

    def put(self, key, request: dict, response: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"key": key, "request": request, "response": response}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.data[key] = response


class OpenAIChat:
    """POST {base_url}/chat/completions with retries (exponential backoff) and a request-rate limit."""

    def __init__(self, base_url=None, model=None, api_key=None, rpm: float = 60, max_retries: int = 5,
                 backoff: float = 1.0, timeout: float = 120, temperature: float = 0.7, max_tokens: int = 1024):
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.model = model or os.environ.get("CURATE_REPHRASE_MODEL")
        if not self.model:
            raise CurationError("rephrase collector: no model; pass --rephrase-model or set CURATE_REPHRASE_MODEL")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.min_interval = 60.0 / rpm if rpm and rpm > 0 else 0.0
        self.max_retries, self.backoff, self.timeout = max_retries, backoff, timeout
        self.temperature, self.max_tokens = temperature, max_tokens
        self._last = 0.0
        self.requests = 0
        self.ident = f"openai:{self.base_url}:{self.model}"

    def __call__(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.max_retries + 1):
            wait = self._last + self.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()
            self.requests += 1
            req = urllib.request.Request(self.base_url + "/chat/completions", data=body, headers=headers,
                                         method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                try:
                    return payload["choices"][0]["message"]["content"] or ""
                except (KeyError, IndexError, TypeError):
                    raise CurationError(f"{self.base_url}/chat/completions: unexpected response "
                                        f"{json.dumps(payload)[:200]}") from None
            except urllib.error.HTTPError as e:
                retryable = e.code == 429 or e.code >= 500
                if not retryable or attempt == self.max_retries:
                    detail = e.read().decode("utf-8", "replace")[:300]
                    raise CurationError(f"{self.base_url}/chat/completions: HTTP {e.code}: {detail}") from None
                ra = e.headers.get("Retry-After") if e.headers else None
                delay = float(ra) if ra and ra.replace(".", "", 1).isdigit() else self.backoff * 2 ** attempt
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.max_retries:
                    raise CurationError(f"{self.base_url}/chat/completions: {e}") from None
                delay = self.backoff * 2 ** attempt
            log.warning("rephrase request failed (attempt %d), retrying in %.1f s", attempt + 1, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")


class HFChat:
    """A local HF model as the rephraser (chat template when the tokenizer has one)."""

    def __init__(self, model_spec: str, temperature: float = 0.7, max_new_tokens: int = 512, seed: int = 0):
        import models

        cfg = {k: v[0] for k, v in config_mod.DEFAULTS.items()}
        cfg.update(model=model_spec, quantization="none")
        self.tok = models.load_tokenizer(model_spec)
        self.model = models.load_base_model(cfg).eval()
        self.temperature, self.max_new_tokens, self.seed = temperature, max_new_tokens, seed
        self.requests = 0
        self.ident = f"hf:{model_spec}"

    def __call__(self, messages):
        import inference

        if getattr(self.tok, "chat_template", None):
            prompt = self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            prompt = "\n\n".join(m["content"] for m in messages) + "\n\n"
        self.requests += 1
        out, _ = inference.sample(self.model, self.tok, [prompt], n=1, temperature=self.temperature, top_p=0.95,
                                  max_new_tokens=self.max_new_tokens, batch_size=1, seed=self.seed + self.requests,
                                  stop=None, progress=False)
        return out[0][0]


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
    rows, st = [], Counter()
    visits = Counter()
    bar = tqdm(total=n, desc="rephrase", unit="ex", disable=not progress, dynamic_ncols=True)
    for k in range(max_attempts):
        if len(rows) >= n:
            break
        src = order[k % len(order)]
        a = visits[src["id"]]
        visits[src["id"]] += 1
        msgs = rephrase_messages(src["question"], task)
        req = {"chat": chat.ident, "messages": msgs, "temperature": getattr(chat, "temperature", None),
               "attempt": a, "source_id": src["id"]}
        key = hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()
        text = cache.get(key)
        if text is None:
            text = chat(msgs)
            cache.put(key, req, text)
            st["requests"] += 1
        else:
            st["cached"] += 1
        parsed = parse_rephrase(text)
        if parsed is None:
            st["rejected_format"] += 1
            continue
        q, sol = parsed
        _, outcome = grading.grade(task, sol, src["reference"])
        if outcome != "correct":
            st["rejected_wrong"] += 1
            continue
        qk, sk = ("question", "answer") if task == "gsm8k" else ("problem", "solution")
        row = {"id": f"{id_prefix}/{src['id']}/{a}", "source_id": src["id"], qk: q, sk: sol, "request_key": key}
        if task == "math" and src.get("level") is not None:
            row["level"] = f"Level {src['level']}"
        rows.append(row)
        st["accepted"] += 1
        bar.update(1)
    bar.close()
    st["attempts"] = sum(visits.values())
    st["shortfall"] = n - len(rows)
    return rows, dict(st)


# ----------------------------------------------------------------------------- sample efficiency


def _monotone(ns, accs):
    o = np.argsort(ns)
    n = np.asarray(ns, dtype=float)[o]
    a = np.maximum.accumulate(np.asarray(accs, dtype=float)[o])
    return n, a


def examples_needed(ns, accs, target: float) -> float | None:
    """Smallest size at which the (running-max) curve reaches `target`, linear in log size between points;
    None when it never does or already exceeds it at its smallest size."""
    n, a = _monotone(ns, accs)
    if target > a[-1] + 1e-12 or target < a[0] - 1e-12:
        return None
    i = int(np.argmax(a >= target - 1e-12))
    if i == 0 or a[i] == a[i - 1]:
        return float(n[i])
    f = (target - a[i - 1]) / (a[i] - a[i - 1])
    return float(np.exp(np.log(n[i - 1]) + f * (np.log(n[i]) - np.log(n[i - 1]))))


def sample_efficiency_ratio(iid: tuple, prem: tuple) -> dict:
    """Examples iid needs / examples premem needs for the same test accuracy. iid, prem: (ns, accs)."""
    ni, ai = _monotone(*iid)
    npm, ap = _monotone(*prem)
    out = {"at_final": None, "geomean": None, "levels": [], "note": None}
    if ap.max() <= ap.min() and ai.max() <= ai.min():
        out["note"] = "both curves are flat: the ratio is undefined"
        return out
    final = float(ap[-1])
    need_i, need_p = examples_needed(ni, ai, final), examples_needed(npm, ap, final)
    if need_i is not None and need_p:
        out["at_final"] = need_i / need_p
    elif need_i is None and final > ai[-1]:
        out["note"] = (f"iid never reaches premem's final accuracy {final:.4f} (max {ai[-1]:.4f}): ratio > "
                       f"{ni[-1] / examples_needed(npm, ap, final):.3f}")
        out["lower_bound"] = float(ni[-1] / examples_needed(npm, ap, final))
    logs = []
    for a in sorted(set(ap.tolist())):
        if a <= max(ai[0], ap[0]) or a > ai[-1]:
            continue
        x, y = examples_needed(ni, ai, a), examples_needed(npm, ap, a)
        if x and y:
            out["levels"].append({"accuracy": a, "iid": x, "premem": y, "ratio": x / y})
            logs.append(math.log(x / y))
    if logs:
        out["geomean"] = float(math.exp(sum(logs) / len(logs)))
    elif out["note"] is None and out["at_final"] is None:
        out["note"] = "no accuracy level reached by both curves above their smallest size"
    return out


# ----------------------------------------------------------------------------- Algorithm 1


def _round_cfg(base: dict, train_file: Path, run_dir: Path) -> dict:
    cfg = dict(base)
    cfg.update(run_dir=str(run_dir), train_file=str(train_file), train_file_mode="replace", subset="full",
               subset_fraction=None, max_train_examples=None, eval_train_examples=None)
    config_mod.validate(cfg)
    return cfg


def default_train_fn(cfg):
    import gc

    import train

    out = train.run_training(cfg)
    gc.collect()
    return out


def default_eval_fn(run: Path, train_records: bool) -> float:
    """Evaluate a round's run: train records at every checkpoint (premem), test at the last one."""
    import gc

    import evaluate
    import train

    ckpts = train.complete_checkpoints(run)
    if not ckpts:
        raise CurationError(f"{run}: training wrote no checkpoint")
    last = int(ckpts[-1].name.split("-")[1])
    if train_records:
        evaluate.run_evaluation(run, ["--splits", "train", "--variants", "original"])
    rows = evaluate.run_evaluation(run, ["--splits", "test", "--variants", "original", "--no-base",
                                         "--steps", str(last)])
    gc.collect()
    return next(r["accuracy"] for r in rows if r["split"] == "test" and r["step"] == last)


def _n_new_one(x, n_seed: int) -> int:
    """One N'_i: a count (500) or a multiple of the seed set's size ("2x": twice |D_train|)."""
    if isinstance(x, int):
        return x
    s = str(x).strip()
    try:
        if s.lower().endswith("x"):
            return round(float(s[:-1]) * n_seed)
        return int(s)
    except ValueError:
        raise CurationError(f"--n-new value {s!r}: expected a count like 500 or a multiple of the seed set "
                            "like 2x") from None


def _n_new_list(n_new, rounds: int, n_seed: int) -> list[int]:
    """N'_1..N'_n from --n-new: one value for every round or one per round. Values are counts or multiples
    of the seed set ("1x 2x 4x 8x" doubles the data each round, the schedule of the authors' MATH runs)."""
    vals = [n_new] if isinstance(n_new, (int, str)) else list(n_new)
    vals = [_n_new_one(x, n_seed) for x in vals]
    if any(v < 0 for v in vals):
        raise CurationError(f"--n-new {vals}: counts must be >= 0")
    if len(vals) == 1:
        return vals * rounds
    if len(vals) != rounds:
        raise CurationError(f"--n-new has {len(vals)} values for {rounds} rounds")
    return vals


def run_algorithm1(base_cfg: dict, out, *, strategy: str, rounds: int, n_new, collector: str = "pool",
                   pool: list[dict] | None = None, pool_name: str = "", seed_examples: list[dict] | None = None,
                   t: float = DEFAULT_T, mem_threshold: float = DEFAULT_MEM_THRESHOLD,
                   fraction: float | None = None, chat=None, rephrase_cache: Path | None = None,
                   ifd_scorer: tuple | None = None, round0_dir: Path | None = None,
                   train_fn=default_train_fn, eval_fn=default_eval_fn, seed: int | None = None) -> dict:
    """Algorithm 1 (see the module docstring for OUT's layout). Returns summary.json's content.

    base_cfg: the training recipe (run_dir, train_file, subset keys are set per round); seed_examples:
    D_train (default: data.train_examples(base_cfg)); pool: candidate rows (collector pool); chat: the
    rephraser (collector rephrase); ifd_scorer: (cfg, checkpoint) of the IFD scorer model; round0_dir:
    a shared round-0 folder (Figure 8)."""
    if strategy not in STRATEGIES:
        raise CurationError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if collector not in COLLECTORS:
        raise CurationError(f"unknown collector {collector!r}; expected one of {', '.join(COLLECTORS)}")
    if collector == "pool" and pool is None:
        raise CurationError("collector pool needs --pool (a JSONL file or 'holdout')")
    if collector == "rephrase" and chat is None:
        raise CurationError("collector rephrase needs an endpoint (--rephrase-model / --rephrase-hf)")
    if strategy == "ifd" and ifd_scorer is None:
        raise CurationError("strategy ifd needs an IFD scorer model")
    out = Path(out)
    task = base_cfg["task"]
    seed = base_cfg["seed"] if seed is None else seed
    if seed_examples is None:
        seed_examples = data_mod.train_examples(base_cfg)
    n_list = _n_new_list(n_new, rounds, len(seed_examples))
    settings = {"strategy": strategy, "collector": collector, "rounds": rounds, "n_new": n_list, "t": t,
                "mem_threshold": mem_threshold, "fraction": fraction, "seed": seed, "pool": pool_name,
                "chat": getattr(chat, "ident", None), "model": base_cfg["model"], "task": task,
                "data": base_cfg["data"]}
    spath = out / "algo1.json"
    if spath.exists():
        old = json.loads(spath.read_text())
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            raise CurationError(f"{spath}: this folder was made with other settings ("
                                + ", ".join(f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in diff)
                                + "); use another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spath, settings)

    split = data_mod.load_split(task, base_cfg["data"], "train", base_cfg["data_config"], base_cfg["math_levels"])
    split_by_id = {e["id"]: e for e in split}
    seed_rows = [to_row(e, task) for e in seed_examples]
    curated: list[dict] = []
    summary_rounds = []
    for k in range(rounds + 1):
        rdir = out / f"round-{k}"
        done = rdir / "done.json"
        if done.exists():
            info = json.loads(done.read_text())
            if k < rounds:
                curated += data_mod.read_jsonl(rdir / "collected.jsonl")
            summary_rounds.append(info)
            log.info("round %d: done (%s), skipped", k, done)
            continue
        tdir = round0_dir if (k == 0 and round0_dir is not None) else rdir
        train_file = Path(tdir) / "train.jsonl"
        run = Path(tdir) / "run"
        if not train_file.exists():
            write_jsonl(train_file, seed_rows + curated)
        cfg = _round_cfg(base_cfg, train_file, run)
        log.info("round %d: training on %d examples (%d curated) in %s", k, len(seed_rows) + len(curated),
                 len(curated), run)
        t0 = time.time()
        train_fn(cfg)
        test_acc = eval_fn(run, strategy == "premem" and k < rounds)
        info = {"round": k, "run_dir": str(run), "n_train": len(seed_rows) + len(curated),
                "n_curated": len(curated), "test_accuracy": test_acc}
        if k < rounds:
            exs = run_train_examples(run, run_config(run))
            pm = premem_scores(run, mem_threshold) if strategy == "premem" else None
            ifd = None
            if strategy == "ifd":
                scfg, ckpt = ifd_scorer
                ifd = ifd_scores(exs, scfg, ckpt, out / "ifd_scores.jsonl")
            sel = select_ids(strategy, exs, task, premem=pm, ifd=ifd, t=t, fraction=fraction)
            atomic_write_json(rdir / "selection.json", sel)
            rseed = seed * 1000 + k
            used = {r["candidate_id"] for r in curated}
            if collector == "pool":
                got, st = pool_collect(pool, sel["sources"], n_list[k], used, seed=rseed)
            else:
                srcs = [split_by_id[s] for s in sel["sources"] if s in split_by_id]
                got, st = rephrase_collect(chat, ResponseCache(rephrase_cache or out / "rephrase_cache.jsonl"),
                                           srcs, n_list[k], task, seed=rseed)
            new = []
            for r in got:
                row = {kk: v for kk, v in r.items() if kk not in ("id", "source_id", "request_key")}
                row.update(id=f"curated/{strategy}/r{k + 1}/{r['id']}", source_id=r["source_id"], round=k + 1,
                           strategy=strategy, collector=collector, candidate_id=r["id"])
                new.append(row)
            write_jsonl(rdir / "collected.jsonl", new)
            curated += new
            info.update(selected=len(sel["selected"]), eligible_sources=len(sel["sources"]), collected=len(new),
                        collect_stats=st)
        info["seconds"] = round(time.time() - t0, 1)
        atomic_write_json(done, info)
        summary_rounds.append(info)
        log.info("round %d: test accuracy %.4f%s", k, test_acc,
                 f"; P' {info['selected']} examples, collected {info['collected']}" if k < rounds else "")
    write_jsonl(out / "curated.jsonl", curated)
    summary = {"settings": settings, "rounds": summary_rounds, "curated": str(out / "curated.jsonl"),
               "final_train_file": str((out / f"round-{rounds}" / "train.jsonl"))}
    atomic_write_json(out / "summary.json", summary)
    return summary


# ----------------------------------------------------------------------------- Figure 8


def ensure_ifd_scorer(base_cfg: dict, folder: Path, train_fn=default_train_fn, epochs: float = 2,
                      n: int | None = None) -> tuple:
    """Train the IFD scorer on the test split (its first n examples; disjoint from the scored train
    examples) for 2 epochs."""
    import train

    folder = Path(folder)
    tf = test_split_as_train_file(base_cfg, folder / "test_as_train.jsonl", n)
    cfg = _round_cfg(base_cfg, tf, folder / "run")
    cfg["num_epochs"] = epochs
    train_fn(cfg)
    ckpts = train.complete_checkpoints(folder / "run")
    if not ckpts:
        raise CurationError(f"{folder / 'run'}: IFD scorer training wrote no checkpoint")
    return cfg, ckpts[-1]


def run_fig8(base_cfg: dict, out, *, strategies=STRATEGIES, rounds: int, n_new, pool=None, pool_name="",
             collector="pool", chat=None, t=DEFAULT_T, mem_threshold=DEFAULT_MEM_THRESHOLD, fraction=None,
             ifd_scorer=None, ifd_scorer_examples=None, train_fn=default_train_fn, eval_fn=default_eval_fn,
             figures=True) -> dict:
    out = Path(out)
    seed_examples = data_mod.train_examples(base_cfg)
    n_list = _n_new_list(n_new, rounds, len(seed_examples))  # a bad --n-new fails before any training
    if "ifd" in strategies and ifd_scorer is None:
        ifd_scorer = ensure_ifd_scorer(base_cfg, out / "ifd-scorer", train_fn, n=ifd_scorer_examples)
    curves = {}
    t0 = time.time()
    for s in strategies:
        summ = run_algorithm1(base_cfg, out / s, strategy=s, rounds=rounds, n_new=n_list, collector=collector,
                              pool=pool, pool_name=pool_name, seed_examples=seed_examples, t=t,
                              mem_threshold=mem_threshold, fraction=fraction, chat=chat,
                              rephrase_cache=out / "rephrase_cache.jsonl", ifd_scorer=ifd_scorer,
                              round0_dir=out / "round-0", train_fn=train_fn, eval_fn=eval_fn)
        curves[s] = [{"n_train": r["n_train"], "test_accuracy": r["test_accuracy"], "round": r["round"]}
                     for r in summ["rounds"]]
    ratio = None
    if "iid" in curves and "premem" in curves:
        ratio = sample_efficiency_ratio(
            ([p["n_train"] for p in curves["iid"]], [p["test_accuracy"] for p in curves["iid"]]),
            ([p["n_train"] for p in curves["premem"]], [p["test_accuracy"] for p in curves["premem"]]))
    res = {"model": base_cfg["model"], "task": base_cfg["task"], "data": base_cfg["data"], "rounds": rounds,
           "n_new": n_list, "seed_examples": len(seed_examples), "curves": curves,
           "sample_efficiency_ratio": ratio, "test_examples": base_cfg["eval_test_examples"],
           "seconds_this_session": round(time.time() - t0, 1)}
    atomic_write_json(out / "fig8.json", res)
    if figures:
        plot_fig8(res, out / "fig8")
    return res


def plot_fig8(res: dict, base: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    style = {"premem": ("tab:red", "o"), "iid": ("tab:gray", "s"), "ifd": ("tab:blue", "^"),
             "heuristic": ("tab:green", "D")}
    for s, pts in res["curves"].items():
        c, m = style.get(s, (None, "o"))
        ax.plot([p["n_train"] for p in pts], [p["test_accuracy"] for p in pts], marker=m, color=c,
                label={"premem": "PreMemAcc (ours)", "iid": "i.i.d."}.get(s, s.upper() if s == "ifd" else s))
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ax.set_xscale("log")
    ns = sorted({p["n_train"] for pts in res["curves"].values() for p in pts})
    ax.set_xticks(ns)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    accs = [p["test_accuracy"] for pts in res["curves"].values() for p in pts]
    ax.set_ylim(-0.02, max(0.1, max(accs, default=0) * 1.15))
    ax.set_xlabel("number of training examples")
    ax.set_ylabel("test accuracy")
    r = res.get("sample_efficiency_ratio") or {}
    val = r.get("at_final") or r.get("geomean")
    ratio = (f"iid/premem examples = {val:.2f}x" if val else
             f"iid/premem > {r['lower_bound']:.2f}x" if r.get("lower_bound") else
             "ratio undefined" if r else "")
    ax.set_title(f"{res['task']}: {res['model'].rstrip('/').split('/')[-1]}" + (f" | {ratio}" if ratio else ""),
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        p = f"{base}.{ext}"
        fig.savefig(p, dpi=120)
        paths.append(p)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- CLI (curate.py select/collect/algo1/fig8)


def _errors(fn):
    @functools.wraps(fn)
    def wrapped(a):
        import premem

        try:
            return fn(a)
        except (CurationError, premem.PremError) as e:
            print(f"curate.py {a.cmd}: error: {e}", file=sys.stderr)
            return 2
    return wrapped


def _add_selection_opts(p):
    p.add_argument("--t", type=float, default=DEFAULT_T, help="premem: PreMemAcc cut (default %(default)s)")
    p.add_argument("--mem-threshold", type=float, default=DEFAULT_MEM_THRESHOLD,
                   help="premem: memorization threshold on log(log(perplexity)) (default %(default)s)")
    p.add_argument("--fraction", type=float,
                   help="ifd/heuristic: top fraction kept (default 0.5 GSM8K, 0.75 MATH)")


def _add_collect_opts(p):
    p.add_argument("--collector", choices=COLLECTORS, default="pool")
    p.add_argument("--pool", help="candidate JSONL (source_id or source_question per row) or 'holdout': "
                                  "the train split minus the seed set, sources by nearest seed question")
    p.add_argument("--pool-size", type=int, help="holdout pool: a seeded sample of N held-out examples")
    p.add_argument("--rephrase-model", help="chat model name (or CURATE_REPHRASE_MODEL); endpoint "
                                            "OPENAI_BASE_URL, key OPENAI_API_KEY")
    p.add_argument("--rephrase-hf", help="rephrase with this local HF model instead of an endpoint")
    p.add_argument("--rpm", type=float, default=60, help="requests per minute at most (default %(default)s)")
    p.add_argument("--max-retries", type=int, default=5)
    p.add_argument("--rephrase-temperature", type=float, default=0.7)


def _chat(a):
    if a.collector != "rephrase":
        return None
    if a.rephrase_hf:
        return HFChat(a.rephrase_hf, temperature=a.rephrase_temperature)
    return OpenAIChat(model=a.rephrase_model, rpm=a.rpm, max_retries=a.max_retries,
                      temperature=a.rephrase_temperature)


def _pool(a, cfg, seed_ids):
    if a.collector != "pool":
        return None, ""
    if not a.pool:
        raise CurationError("--collector pool needs --pool FILE.jsonl or --pool holdout")
    split = data_mod.load_split(cfg["task"], cfg["data"], "train", cfg["data_config"], cfg["math_levels"])
    if a.pool == "holdout":
        return holdout_pool(split, seed_ids, cfg["task"], a.pool_size, cfg["seed"]), f"holdout:{a.pool_size}"
    return load_pool(a.pool, cfg["task"], split), str(a.pool)


def _ifd_scorer_arg(text, base_cfg):
    if not text:
        return None
    import train

    run = Path(text)
    ck = train.complete_checkpoints(run)
    if not ck:
        raise CurationError(f"--ifd-scorer {run}: no complete checkpoint")
    return run_config(run), ck[-1]


@_errors
def cmd_select(a) -> int:
    run = Path(a.run)
    cfg = run_config(run)
    exs = run_train_examples(run, cfg)
    pm = premem_scores(run, a.mem_threshold) if a.strategy == "premem" else None
    ifd = None
    if a.strategy == "ifd":
        if not a.ifd_scorer:
            raise CurationError("--strategy ifd needs --ifd-scorer RUN (a model trained on disjoint data)")
        scfg, ck = _ifd_scorer_arg(a.ifd_scorer, cfg)
        ifd = ifd_scores(exs, scfg, ck, Path(a.ifd_scorer) / "ifd_scores.jsonl")
    sel = select_ids(a.strategy, exs, cfg["task"], premem=pm, ifd=ifd, t=a.t, fraction=a.fraction)
    sel["run"] = str(run)
    atomic_write_json(a.out, sel)
    print(f"{a.strategy}: P'(x) = {len(sel['selected'])} of {sel['n_examples']} train examples "
          f"({len(sel['sources'])} sources); wrote {a.out}")
    return 0


@_errors
def cmd_collect(a) -> int:
    p = Path(a.selection)
    if not p.exists():
        raise CurationError(f"--selection {p} does not exist (write it with curate.py select)")
    sel = json.loads(p.read_text())
    for k in ("sources", "run"):
        if k not in sel:
            raise CurationError(f"{p}: not a selection file (no key {k!r})")
    cfg = run_config(Path(sel["run"]))
    exs = run_train_examples(Path(sel["run"]), cfg)
    used = set()
    if a.exclude:
        used = {str(r.get("candidate_id") or r.get("id")) for r in data_mod.read_jsonl(a.exclude)}
    if a.collector == "pool":
        pool, _ = _pool(a, cfg, [e["id"] for e in exs if source_of(e) == e["id"]])
        rows, st = pool_collect(pool, sel["sources"], a.n, used, seed=a.seed)
    else:
        split = {e["id"]: e for e in data_mod.load_split(cfg["task"], cfg["data"], "train", cfg["data_config"],
                                                         cfg["math_levels"])}
        cache = ResponseCache(a.cache or Path(a.out).with_suffix(".cache.jsonl"))
        rows, st = rephrase_collect(_chat(a), cache, [split[s] for s in sel["sources"] if s in split], a.n,
                                    cfg["task"], seed=a.seed)
    out_rows = [{**{k: v for k, v in r.items() if k not in ("id", "request_key")}, "id": f"curated/{r['id']}",
                 "candidate_id": r["id"], "strategy": sel.get("strategy"), "collector": a.collector} for r in rows]
    write_jsonl(a.out, out_rows)
    data_mod.load_extra_file(a.out, cfg["task"])  # a file train.py accepts
    print(f"collected {len(out_rows)} of {a.n} ({json.dumps(st)}); wrote {a.out}")
    return 0


def _base_cfg(a):
    fl = [x for x in getattr(a, "overrides", [])]
    return config_mod.load_config(a.config, fl)


@_errors
def cmd_algo1(a) -> int:
    cfg = _base_cfg(a)
    seed_examples = data_mod.train_examples(cfg)
    pool, pname = _pool(a, cfg, [e["id"] for e in seed_examples])
    scorer = _ifd_scorer_arg(a.ifd_scorer, cfg)
    if a.strategy == "ifd" and scorer is None:
        scorer = ensure_ifd_scorer(cfg, Path(a.out) / "ifd-scorer", n=a.ifd_scorer_examples)
    s = run_algorithm1(cfg, a.out, strategy=a.strategy, rounds=a.rounds, n_new=a.n_new, collector=a.collector,
                       pool=pool, pool_name=pname, seed_examples=seed_examples, t=a.t,
                       mem_threshold=a.mem_threshold, fraction=a.fraction, chat=_chat(a), ifd_scorer=scorer)
    for r in s["rounds"]:
        print(f"round {r['round']}: n_train {r['n_train']:>6}  test accuracy {r['test_accuracy']:.4f}"
              + (f"  P' {r['selected']}  collected {r['collected']}" if "collected" in r else ""))
    print(f"wrote {Path(a.out) / 'summary.json'} and {s['curated']}")
    return 0


@_errors
def cmd_fig8(a) -> int:
    cfg = _base_cfg(a)
    seed_examples = data_mod.train_examples(cfg)
    pool, pname = _pool(a, cfg, [e["id"] for e in seed_examples])
    res = run_fig8(cfg, a.out, strategies=a.strategies, rounds=a.rounds, n_new=a.n_new, pool=pool,
                   pool_name=pname, collector=a.collector, chat=_chat(a), t=a.t, mem_threshold=a.mem_threshold,
                   fraction=a.fraction, ifd_scorer=_ifd_scorer_arg(a.ifd_scorer, cfg),
                   ifd_scorer_examples=a.ifd_scorer_examples, figures=not a.no_figures)
    for s, pts in res["curves"].items():
        print(f"{s:>9}: " + "  ".join(f"n={p['n_train']} acc={p['test_accuracy']:.4f}" for p in pts))
    r = res["sample_efficiency_ratio"]
    if r:
        print(f"sample-efficiency ratio (iid examples / premem examples, same test accuracy): at premem's final "
              f"accuracy {r['at_final']}, geometric mean over levels {r['geomean']}"
              + (f" ({r['note']})" if r.get("note") else ""))
    print(f"wrote {Path(a.out) / 'fig8.json'}" + ("" if a.no_figures else f" and {Path(a.out) / 'fig8'}.{{png,pdf}}"))
    return 0


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
    p.add_argument("--n", type=int, required=True, help="number of new examples N'")
    p.add_argument("--out", required=True, help="output JSONL (dataset schema + provenance)")
    p.add_argument("--exclude", help="JSONL of earlier collected rows never to draw again")
    p.add_argument("--cache", help="rephrase response cache (default OUT.cache.jsonl)")
    p.add_argument("--seed", type=int, default=0)
    _add_collect_opts(p)
    return p


def _add_loop_opts(p):
    p.add_argument("config", help="YAML train config (the recipe; its subset / max_train_examples give D_train)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--rounds", type=int, default=5, help="rounds n (paper 5; default %(default)s)")
    p.add_argument("--n-new", nargs="+", required=True,
                   help="N'_i per round (one value or n): a count, or a multiple of the seed set such as 2x "
                        "(the authors' MATH schedule: 1x 2x 4x 8x)")
    p.add_argument("--ifd-scorer", metavar="RUN", help="ifd: existing scorer run (default: train one on "
                                                       "the test split for 2 epochs in OUT/ifd-scorer)")
    p.add_argument("--ifd-scorer-examples", type=int, metavar="N",
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
    "select": (add_select_parser, cmd_select),
    "collect": (add_collect_parser, cmd_collect),
    "algo1": (add_algo1_parser, cmd_algo1),
    "fig8": (add_fig8_parser, cmd_fig8),
}
