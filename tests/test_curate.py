"""Algorithm 1 (curate.py select/collect/algo1/fig8; premem_kit selection, collectors, chat, algorithm1,
fig8): each strategy's P'(x) on synthetic records with hand-computed ids, the pool collector's draws,
the rephrase collector against a real HTTP server on 127.0.0.1, Algorithm 1's round-level resume on the
tiny model, the IFD scorer set-up, and Figure 8's runner, ratio and figure with injected train and
evaluate functions."""
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import curate
from conftest import DEMO_DATA, tiny_cfg, write_synthetic_run
from premem_kit.core import config
from premem_kit.curation import algorithm1
from premem_kit.curation import chat
from premem_kit.curation import collectors
from premem_kit.curation import fig8
from premem_kit.core import runs
from premem_kit.curation import selection
from premem_kit.tasks import data as data_mod
from premem_kit.curation.vocabulary import CurationError
from premem_kit.core.files import read_jsonl
from premem_kit.core.config import DataSettings

# ----------------------------------------------------------------------------- synthetic run


# (acc at steps 4, 8), (ppl at steps 4, 8), PreMemAcc with loglog threshold -2.3 (ppl 1.1055)
SYNTH = {
    "gsm8k/train/0": ((1.0, 1.0), (2.0, 2.0)),     # 1.0: learned robustly
    "gsm8k/train/1": ((0.0, 1.0), (2.0, 1.01)),    # 0.0: right only once memorized
    "gsm8k/train/2": ((1.0, 0.5), (2.0, 2.0)),     # min(1, 0.5) = 0.5
    "gsm8k/train/3": ((1.0, 0.75), (3.0, 3.0)),    # min(1, 0.75) = 0.75: not below t = 0.75
    "gsm8k/train/4": ((1.0, 1.0), (1.05, 1.05)),   # 0.0: memorized at every checkpoint
    "gsm8k/train/5": ((0.5, 1.0), (1.5, 1.05)),    # max(0.5, 0) = 0.5
    "curated/premem/r1/c0": ((0.0, 0.0), (2.0, 2.0)),  # 0.0, derives from gsm8k/train/10
}


def synthetic_run(tmp_path) -> Path:
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "curated/premem/r1/c0", "question": "Q?", "answer": "a\nb\n#### 3",
                                 "source_id": "gsm8k/train/10", "round": 1}) + "\n")
    run = tmp_path / "run"
    cfg = tiny_cfg("unused-model", run, train_file=str(extra), train_file_mode="append")
    acc = [[a[k] for a, _ in SYNTH.values()] for k in range(2)]
    ppl = [[p[k] for _, p in SYNTH.values()] for k in range(2)]
    return write_synthetic_run(run, [4, 8], acc, ppl, ids=list(SYNTH), config=cfg)


def test_premem_and_iid_selection_on_synthetic_records(tmp_path):
    run = synthetic_run(tmp_path)
    exs = data_mod.run_train_examples(run)
    pm = selection.premem_scores(run, mem_threshold=-2.3)
    assert pm == pytest.approx({"gsm8k/train/0": 1.0, "gsm8k/train/1": 0.0, "gsm8k/train/2": 0.5,
                                "gsm8k/train/3": 0.75, "gsm8k/train/4": 0.0, "gsm8k/train/5": 0.5,
                                "curated/premem/r1/c0": 0.0})
    sel = selection.select_ids("premem", exs, "gsm8k", premem=pm, t=0.75)
    assert sel["selected"] == ["gsm8k/train/1", "gsm8k/train/2", "gsm8k/train/4", "gsm8k/train/5",
                               "curated/premem/r1/c0"]
    # a curated row makes its source eligible
    assert sel["sources"] == ["gsm8k/train/1", "gsm8k/train/2", "gsm8k/train/4", "gsm8k/train/5",
                              "gsm8k/train/10"]
    assert selection.select_ids("premem", exs, "gsm8k", premem=pm, t=0.5)["selected"] == [
        "gsm8k/train/1", "gsm8k/train/4", "curated/premem/r1/c0"]
    iid = selection.select_ids("iid", exs, "gsm8k")
    assert iid["selected"] == list(SYNTH) and len(iid["sources"]) == 7
    # the CLI chooses among D_train, the run's original examples (Algorithm 1, line 6): the curated row,
    # whose PreMemAcc 0.0 would put it in P', is left out; --select-from all keeps the earlier rule
    out = tmp_path / "sel.json"
    assert curate.main(["select", str(run), "--strategy", "premem", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["selected"] == ["gsm8k/train/1", "gsm8k/train/2", "gsm8k/train/4", "gsm8k/train/5"]
    assert got["n_examples"] == 6 and "curated/premem/r1/c0" not in got["scores"]
    assert (got["mem_threshold"], got["mem_threshold_source"], got["select_from"]) == (-2.4, "gsm8k default",
                                                                                       "original")
    assert curate.main(["select", str(run), "--strategy", "premem", "--out", str(out), "--select-from", "all"]) == 0
    assert json.loads(out.read_text())["selected"] == sel["selected"]
    assert selection.d_train(exs) == exs[:6] and selection.d_train(exs, ids=["gsm8k/train/3"]) == [exs[3]]
    # PreMemAcc missing for an example is an error, not a silent skip
    with pytest.raises(CurationError, match="no PreMemAcc for 1"):
        selection.select_ids("premem", exs, "gsm8k", premem={k: v for k, v in pm.items() if k != "gsm8k/train/3"})


def _ex(i, sol="", level=None):
    return {"id": f"x/{i}", "question": f"q{i}", "solution": sol, "level": level, "prompt": "", "target": ""}


def test_heuristic_and_ifd_selection_exact_ids():
    lines = [3, 1, 4, 1, 5, 9, 2, 6]
    exs = [_ex(i, "\n".join(["step"] * (n - 1) + [f"#### {i}"])) for i, n in enumerate(lines)]
    sel = selection.select_ids("heuristic", exs, "gsm8k")  # top 50% by number of lines
    assert sel["selected"] == ["x/2", "x/4", "x/5", "x/7"] and sel["fraction"] == 0.5
    levels = [1, 3, 2, 3, 1, 2, 3, 1]
    mexs = [_ex(i, "s", lv) for i, lv in enumerate(levels)]
    # top 75% = 6 of 8 by level; the level-1 tie keeps the first (x/0)
    assert selection.select_ids("heuristic", mexs, "math")["selected"] == ["x/0", "x/1", "x/2", "x/3", "x/5", "x/6"]
    ifd = {f"x/{i}": s for i, s in enumerate([0.9, 1.2, 0.3, 1.1, 0.95, 0.2, 1.0, 0.99])}
    assert selection.select_ids("ifd", exs, "gsm8k", ifd=ifd)["selected"] == ["x/1", "x/3", "x/6", "x/7"]
    assert selection.select_ids("ifd", exs, "math", ifd=ifd)["selected"] == ["x/0", "x/1", "x/3", "x/4", "x/6",
                                                                           "x/7"]
    assert selection.top_fraction(["a", "b", "c", "d"], {"a": 1, "b": 2, "c": 2, "d": 1}, 0.75) == ["a", "b", "c"]
    with pytest.raises(CurationError, match="unknown strategy"):
        selection.select_ids("random", exs, "gsm8k")


def test_ifd_scores_are_the_perplexity_ratio_and_cached(tmp_path, tiny_model):
    from premem_kit.models import inference
    from premem_kit.models import loading as models

    cfg = tiny_cfg(tiny_model, tmp_path / "r")
    exs = data_mod.load_split(DataSettings(data=str(DEMO_DATA)), "train")[:4]
    cache = tmp_path / "ifd.jsonl"
    got = selection.ifd_scores(exs, cfg, None, cache)
    tok = models.load_tokenizer(str(tiny_model))
    model = models.load_base_model(cfg).eval()
    cond, _ = inference.perplexities(model, tok, [e["prompt"] for e in exs], [e["target"] for e in exs], progress=False)
    assert selection.bos_prompt(tok) == ""  # the tiny tokenizer adds <s> itself
    unc, _ = inference.perplexities(model, tok, [""] * 4, [e["target"] for e in exs], progress=False)
    for e, c, u in zip(exs, cond, unc):
        assert got[e["id"]] == pytest.approx(c / u, rel=1e-4)
        assert c != pytest.approx(u, rel=1e-3)  # the question changes the perplexity
    # a second call is answered from the cache: no model is loaded

    def boom():
        raise AssertionError("model loaded although every score is cached")

    assert selection.ifd_scores(exs, cfg, None, cache, loader=boom) == got


# ----------------------------------------------------------------------------- pool collector


def test_pool_collector_never_draws_outside_p_prime_nor_twice():
    pool = [{"id": f"c{j}", "source_id": f"gsm8k/train/{j % 10}", "question": "q", "answer": "#### 1"}
            for j in range(60)]
    eligible = {"gsm8k/train/1", "gsm8k/train/4", "gsm8k/train/7"}  # 18 candidates
    used, drawn = set(), []
    for rnd in range(5):
        rows, st = collectors.pool_collect(pool, eligible, 5, used, seed=rnd)
        assert all(r["source_id"] in eligible for r in rows)
        assert not {r["id"] for r in rows} & used
        used |= {r["id"] for r in rows}
        drawn += rows
    assert len(drawn) == len(used) == 18  # every eligible candidate once, then nothing left
    assert st == {"eligible": 0, "drawn": 0, "wanted": 5, "shortfall": 5}
    a, _ = collectors.pool_collect(pool, eligible, 6, seed=3)
    b, _ = collectors.pool_collect(pool, eligible, 6, seed=3)
    c, _ = collectors.pool_collect(pool, eligible, 6, seed=4)
    assert a == b and a != c  # seeded


def test_pool_file_and_holdout_pool(tmp_path):
    split = data_mod.load_split(DataSettings(data=str(DEMO_DATA)), "train")
    q3 = "  " + split[3]["question"].replace(" ", "   ") + " "
    p = tmp_path / "pool.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "source_id": "gsm8k/train/1", "question": "Q1", "answer": "s\n#### 5"},
        {"source_question": q3, "question": "Q3", "answer": "#### 7"},
        {"query": "Q9?", "response": "Add them. The answer is: 12", "original_question": split[9]["question"],
         "type": "GSM_Rephrased"},
        {"query": "Q?", "response": "x. The answer is: 1", "original_question": "not in the data"},
    ]) + "\n")
    rows = collectors.load_pool(p, "gsm8k", split)
    assert [(r["id"], r["source_id"]) for r in rows] == [("a", "gsm8k/train/1"), ("pool/2", "gsm8k/train/3"),
                                                         ("pool/3", "gsm8k/train/9")]
    assert rows[2]["answer"] == "Add them.\n#### 12"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Q", "answer": "#### 1", "source_id": "gsm8k/train/1"}) + "\n"
                   + json.dumps({"question": "Q", "answer": "#### 1"}) + "\n")
    with pytest.raises(CurationError, match=r"bad.jsonl, line 2: a pool row needs source_id"):
        collectors.load_pool(bad, "gsm8k", split)
    bad.write_text(json.dumps({"question": "Q", "answer": "#### 1", "source_id": "gsm8k/train/99999"}) + "\n")
    with pytest.raises(CurationError, match=r"line 1: source_id 'gsm8k/train/99999' is not"):
        collectors.load_pool(bad, "gsm8k", split)
    # offline pool: the train split minus the seed set, each row's source its nearest seed question
    seed_ids = [e["id"] for e in split[:10]]
    near = dict(split[50])
    near["id"], near["question"] = "copy", split[4]["question"] + " Please."
    hold = collectors.holdout_pool(split[:40] + [near], seed_ids, "gsm8k")
    assert len(hold) == 31 and not {r["id"] for r in hold} & set(seed_ids)
    assert all(r["source_id"] in seed_ids for r in hold)
    assert next(r for r in hold if r["id"] == "copy")["source_id"] == "gsm8k/train/4"
    assert len(collectors.holdout_pool(split[:40], seed_ids, "gsm8k", size=7)) == 7


# ----------------------------------------------------------------------------- rephrase collector


class StubChat(BaseHTTPRequestHandler):
    """OpenAI chat-completions stub: rephrases by prefixing, solves with the right answer except for
    questions in `wrong`, and answers the very first request with 429."""

    requests: list = []
    answers: dict = {}
    wrong: set = set()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body,
                                    "t": time.monotonic()})
        if len(type(self).requests) == 1:
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(b'{"error": "rate limited"}')
            return
        user = body["messages"][-1]["content"]
        q = user.split("Problem:\n", 1)[1].split("\n\nReply exactly", 1)[0]
        ans = "999" if q in self.wrong else self.answers[q]
        content = f"Question: In other words: {q}\nSolution: Work it out.\n#### {ans}"
        out = json.dumps({"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                       "finish_reason": "stop"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


@pytest.fixture
def stub_server(monkeypatch):
    StubChat.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), StubChat)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{srv.server_address[1]}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("CURATE_REPHRASE_MODEL", "stub-model")
    yield StubChat
    srv.shutdown()
    srv.server_close()


def test_rephrase_collector_against_local_http_server(tmp_path, stub_server):
    srcs = data_mod.load_split(DataSettings(data=str(DEMO_DATA)), "train")[:3]
    stub_server.answers = {e["question"]: e["reference"] for e in srcs}
    stub_server.wrong = {srcs[1]["question"]}
    cache_path = tmp_path / "cache.jsonl"
    client = chat.OpenAIChat(rpm=1200, backoff=0.01)
    rows, st = collectors.rephrase_collect(client, chat.ResponseCache(cache_path), srcs, 10, "gsm8k", seed=0,
                                           max_attempts=6, progress=False)
    reqs = stub_server.requests
    # 6 attempts (2 per source) + 1 retry after the 429; 10 wanted, 4 kept
    assert st["requests"] == 6 and st["accepted"] == 4 and st["rejected_wrong"] == 2 and len(reqs) == 7
    assert st["shortfall"] == 6
    assert all(r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer test-key" for r in reqs)
    assert all(r["body"]["model"] == "stub-model" and r["body"]["messages"][0]["role"] == "system" for r in reqs)
    assert reqs[1]["body"] == reqs[0]["body"]  # the retried request is the same request
    assert reqs[-1]["t"] - reqs[0]["t"] >= 6 * 0.05 - 0.01  # 1200 per minute: 50 ms apart
    assert {r["source_id"] for r in rows} == {srcs[0]["id"], srcs[2]["id"]}  # the wrong answers are rejected
    for r in rows:
        src = next(e for e in srcs if e["id"] == r["source_id"])
        assert r["question"] == "In other words: " + src["question"]
        assert r["answer"].endswith(f"#### {src['reference']}")
    assert len(cache_path.read_text().splitlines()) == 6
    # a rerun is answered from the cache: not one request
    chat2 = chat.OpenAIChat(rpm=1200, backoff=0.01)
    rows2, st2 = collectors.rephrase_collect(chat2, chat.ResponseCache(cache_path), srcs, 10, "gsm8k", seed=0,
                                             max_attempts=6, progress=False)
    assert rows2 == rows and st2["cached"] == 6 and st2.get("requests", 0) == 0
    assert len(stub_server.requests) == 7 and chat2.requests == 0
    # a kill during an append leaves a torn last line: dropped on open, so the next append gets a line
    with open(cache_path, "a") as f:
        f.write('{"key": "torn", "resp')
    cache = chat.ResponseCache(cache_path)
    assert len(cache.data) == 6 and cache.get("torn") is None
    cache.put("k7", {"x": 1}, "text")
    assert chat.ResponseCache(cache_path).get("k7") == "text" and len(cache_path.read_text().splitlines()) == 7


def test_rephrase_http_error_is_reported(stub_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens on port 9
    client = chat.OpenAIChat(max_retries=1, backoff=0.01)
    with pytest.raises(CurationError, match="127.0.0.1:9/v1/chat/completions"):
        client([{"role": "user", "content": "hi"}])


# ----------------------------------------------------------------------------- Algorithm 1 resume


def test_algorithm1_resumes_at_round_granularity(tmp_path, tiny_model, monkeypatch):
    from premem_kit.training.trainer import run_training

    cfg = tiny_cfg(tiny_model, tmp_path / "unused", max_train_examples=4, batch_size=2, micro_batch_size=2,
                   num_epochs=1, eval_base_model=False, eval_samples=1, eval_max_new_tokens=8,
                   eval_test_examples=2, max_length=256)
    seed = data_mod.train_examples(cfg)
    split = data_mod.load_split(DataSettings(data=str(DEMO_DATA)), "train")
    pool = collectors.holdout_pool(split, [e["id"] for e in seed], "gsm8k", size=30)
    trained = []

    def train_fn(c):
        trained.append((c.run_dir, (Path(c.run_dir) / "train_summary.json").exists()))
        return run_training(c)

    real_collect = collectors.pool_collect
    calls = []

    def failing_collect(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt("interrupted in round 0")
        return real_collect(*a, **k)

    out = tmp_path / "algo1"
    src = algorithm1.Sources(pool=pool, pool_name="holdout", seed_examples=seed, train_fn=train_fn)
    kw = dict(strategy="premem", rounds=1, n_new=2, sources=src)
    monkeypatch.setattr(collectors, "pool_collect", failing_collect)
    with pytest.raises(KeyboardInterrupt):  # round 0 interrupted after training and evaluation
        algorithm1.run_algorithm1(cfg, out, **kw)
    assert (out / "round-0" / "run" / "train_summary.json").exists()
    assert not (out / "round-0" / "done.json").exists() and not (out / "round-1").exists()
    monkeypatch.setattr(collectors, "pool_collect", real_collect)
    summary0 = (out / "round-0" / "run" / "train_summary.json").stat().st_mtime_ns
    records0 = sorted(p.name for p in (out / "round-0" / "run" / "records").iterdir())
    trained.clear()
    s = algorithm1.run_algorithm1(cfg, out, **kw)
    # round 0's finished training and records are reused, not redone; round 1 trains
    assert [(Path(r).parent.name, done) for r, done in trained] == [("round-0", True), ("round-1", False)]
    assert (out / "round-0" / "run" / "train_summary.json").stat().st_mtime_ns == summary0
    assert sorted(p.name for p in (out / "round-0" / "run" / "records").iterdir()) == records0
    assert [r["n_train"] for r in s["rounds"]] == [4, 6]
    cur = data_mod.read_jsonl(out / "curated.jsonl")
    assert len(cur) == 2 and len({r["candidate_id"] for r in cur}) == 2
    assert {(r["round"], r["strategy"], r["collector"]) for r in cur} == {(1, "premem", "pool")}
    sel = json.loads((out / "round-0" / "selection.json").read_text())
    assert sel["selected"] and all(r["source_id"] in sel["sources"] for r in cur)
    final = data_mod.load_extra_file(out / "round-1" / "train.jsonl", "gsm8k")
    assert len(final) == 6 and sum("source_id" in e["meta"] for e in final) == 2
    assert len(json.loads((out / "round-1" / "run" / "subset_ids.json").read_text())) == 6
    # a third run skips every done round whole; other settings in the same folder are an error
    trained.clear()
    assert algorithm1.run_algorithm1(cfg, out, **kw)["rounds"] == s["rounds"]
    assert trained == []
    with pytest.raises(CurationError, match=r"n_new: \[2\] -> \[3\]"):
        algorithm1.run_algorithm1(cfg, out, **{**kw, "n_new": 3})


# ----------------------------------------------------------------------------- Figure 8 ratio


def test_sample_efficiency_ratio_and_figure(tmp_path):
    ns = [100, 200, 400, 800]
    iid = (ns, [0.2, 0.3, 0.4, 0.5])        # +0.1 per doubling
    prem = (ns, [0.3, 0.4, 0.5, 0.6])       # the same curve with half the examples
    assert fig8.examples_needed(*iid, 0.45) == pytest.approx(400 * math.sqrt(2))
    assert fig8.examples_needed(*iid, 0.55) is None
    r = fig8.sample_efficiency_ratio(iid, prem)
    assert r["geomean"] == pytest.approx(2.0) and [lv["ratio"] for lv in r["levels"]] == pytest.approx([2, 2])
    assert r["at_final"] is None and r["lower_bound"] == pytest.approx(1.0)
    prem3 = ([100, 300, 900], [0.2, 0.4, 0.5])  # premem reaches 0.5 at 900 (iid: 800)
    assert fig8.sample_efficiency_ratio(iid, prem3)["at_final"] == pytest.approx(800 / 900)
    flat = fig8.sample_efficiency_ratio((ns, [0] * 4), (ns, [0] * 4))
    assert flat["at_final"] is None and flat["geomean"] is None and "undefined" in flat["note"]
    res = {"task": "gsm8k", "model": "m", "curves": {s: [{"n_train": n, "test_accuracy": a} for n, a in zip(*c)]
                                                    for s, c in (("iid", iid), ("premem", prem))},
           "sample_efficiency_ratio": r}
    assert fig8.plot_fig8(res, tmp_path) == ["fig8.png", "fig8.pdf"]
    assert all((tmp_path / n).stat().st_size > 1000 for n in ("fig8.png", "fig8.pdf"))


def test_cli_bad_input_names_the_problem(tmp_path, capsys):
    out = tmp_path / "x.jsonl"
    assert curate.main(["collect", "--selection", str(tmp_path / "nope.json"), "--n", "2", "--pool", "holdout",
                        "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "curate.py collect: error: --selection" in err and "nope.json does not exist" in err
    bad = tmp_path / "sel.json"
    bad.write_text(json.dumps({"selected": []}))
    assert curate.main(["collect", "--selection", str(bad), "--n", "2", "--pool", "holdout", "--out", str(out)]) == 2
    assert f"{bad}: not a selection file (no key 'sources')" in capsys.readouterr().err
    assert curate.main(["select", str(tmp_path), "--strategy", "premem", "--out", str(tmp_path / "s.json")]) == 2
    assert "config.yaml" in capsys.readouterr().err
    assert not out.exists()
    # a bad --n-new fails before anything trains; key=value overrides may follow the options
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(config.dump(tiny_cfg("unused-model", tmp_path / "r", max_train_examples=8)))
    assert curate.main(["algo1", str(recipe), "--out", str(tmp_path / "a1"), "--n-new", "two", "--pool", "holdout",
                        "seed=3"]) == 2
    assert "curate.py algo1: error: --n-new value 'two'" in capsys.readouterr().err
    assert not (tmp_path / "a1").exists() and not (tmp_path / "r").exists()


def test_cli_select_then_collect_from_the_holdout_pool(tmp_path, capsys):
    run = synthetic_run(tmp_path)
    sel_path, new = tmp_path / "sel.json", tmp_path / "new.jsonl"
    assert curate.main(["select", str(run), "--strategy", "premem", "--out", str(sel_path)]) == 0
    sel = json.loads(sel_path.read_text())
    args = ["collect", "--selection", str(sel_path), "--n", "3", "--pool", "holdout", "--seed", "1"]
    assert curate.main([*args, "--out", str(new)]) == 0
    assert "collected 3 of 3" in capsys.readouterr().out
    rows = read_jsonl(new)
    assert len(rows) == 3 and all(r["source_id"] in sel["sources"] for r in rows)
    assert all(r["id"] == f"curated/{r['candidate_id']}" and (r["strategy"], r["collector"]) == ("premem", "pool")
               for r in rows)
    assert len(data_mod.load_extra_file(new, "gsm8k")) == 3  # a train_file train.py accepts
    # the same draw with the first file excluded gives other candidates
    assert curate.main([*args, "--out", str(tmp_path / "more.jsonl"), "--exclude", str(new)]) == 0
    more = read_jsonl(tmp_path / "more.jsonl")
    assert len(more) == 3 and not {r["candidate_id"] for r in more} & {r["candidate_id"] for r in rows}


def test_n_new_counts_and_multiples_of_the_seed_set():
    # the authors' MATH schedule: each round adds as much new data as there already is (1x 2x 4x 8x)
    assert algorithm1.n_new_list(["1x", "2x", "4x", "8x"], 4, 3506) == [3506, 7012, 14024, 28048]
    assert algorithm1.n_new_list(["500"], 3, 10) == [500, 500, 500]
    assert algorithm1.n_new_list(7, 2, 10) == [7, 7]
    assert algorithm1.n_new_list(["0.5x", "12"], 2, 9) == [4, 12]  # round(4.5) -> 4 (banker's), then a count
    with pytest.raises(CurationError, match="--n-new has 2 values for 3 rounds"):
        algorithm1.n_new_list(["1x", "2x"], 3, 10)
    with pytest.raises(CurationError, match="--n-new value 'two': expected a count like 500"):
        algorithm1.n_new_list(["two"], 1, 10)
    with pytest.raises(CurationError, match="must be >= 0"):
        algorithm1.n_new_list(["-1x"], 1, 10)


# ----------------------------------------------------------------------------- injected train / evaluate


def fake_train_fn(calls, curated_acc=None):
    """A train function that writes a finished run folder without a model: config.yaml, subset_ids.json,
    train records at steps 1 and 2 (PreMemAcc 0.5 for every other example, 1.0 for the rest; curated_acc
    for the curated rows when given), complete checkpoints and train_summary.json."""
    def train_fn(cfg):
        from premem_kit.core.files import atomic_write_json

        calls.append(cfg)
        ids = [e["id"] for e in data_mod.train_examples(cfg)]
        acc = [0.5 if j % 2 == 0 else 1.0 for j in range(len(ids))]
        if curated_acc is not None:
            acc = [curated_acc if i.startswith("curated/") else a for i, a in zip(ids, acc)]
        run = write_synthetic_run(cfg.run_dir, [1, 2], [acc, acc], [[2.0] * len(ids)] * 2, ids=ids, config=cfg,
                                  complete_checkpoints=True)
        atomic_write_json(runs.summary_path(run), {"examples": len(ids)})
        return {"examples": len(ids)}
    return train_fn


def test_ifd_scorer_trains_once_on_the_test_split(tmp_path):
    from premem_kit.core.config import ConfigError

    base = tiny_cfg("unused-model", tmp_path / "recipe_run", max_train_examples=8, num_epochs=3)
    calls = []
    folder = tmp_path / "ifd-scorer"
    cfg, ckpt = algorithm1.ensure_ifd_scorer(base, folder, fake_train_fn(calls), epochs=2, n=5)
    # the recipe, trained on the first 5 test examples as its whole train set, for 2 epochs, in its own folder
    assert calls == [cfg]
    old, new = config.to_dict(base), config.to_dict(cfg)
    assert {k for k in old if old[k] != new[k]} == {"run_dir", "train_file", "num_epochs", "max_train_examples",
                                                       "eval_train_examples"}
    assert cfg.run_dir == str(folder / "run") and cfg.num_epochs == 2
    assert cfg.train_file == str(folder / "test_as_train.jsonl") and cfg.train_file_mode == "replace"
    assert cfg.max_train_examples is None and cfg.eval_train_examples is None
    test = data_mod.load_split(DataSettings(data=str(DEMO_DATA)), "test")[:5]
    assert [r["id"] for r in read_jsonl(folder / "test_as_train.jsonl")] == [f"gsm8k/test/{i}" for i in range(5)]
    trained_on = sorted(data_mod.train_examples(cfg), key=lambda e: e["id"])  # a seeded order
    assert [(e["id"], e["question"], e["solution"]) for e in trained_on] == [
        (e["id"], e["question"], e["solution"]) for e in test]
    assert ckpt == folder / "run" / "checkpoint-2"
    # a second call reuses the finished scorer: no training
    assert algorithm1.ensure_ifd_scorer(base, folder, fake_train_fn(calls), epochs=2, n=5) == (cfg, ckpt)
    assert len(calls) == 1
    # another number of test examples or of epochs is an error, not a silent reuse
    with pytest.raises(CurationError, match="holds other test examples"):
        algorithm1.ensure_ifd_scorer(base, folder, fake_train_fn(calls), epochs=2, n=6)
    with pytest.raises(ConfigError, match="num_epochs"):
        algorithm1.ensure_ifd_scorer(base, folder, fake_train_fn(calls), epochs=3, n=5)
    assert len(calls) == 1


# test accuracy per strategy and round (round 0 is shared)
FIG8_ACC = {"premem": [0.2, 0.4, 0.5], "iid": [0.2, 0.3, 0.45], "heuristic": [0.2, 0.25, 0.35]}


def test_fig8_runner_curves_ratio_and_figure(tmp_path):
    base = tiny_cfg("models/tiny-lm", tmp_path / "recipe_run", max_train_examples=8)
    seed_ids = [e["id"] for e in data_mod.train_examples(base)]
    pool = collectors.holdout_pool(data_mod.load_split(DataSettings(data=str(DEMO_DATA)), "train"), seed_ids, "gsm8k")
    out = tmp_path / "fig8"
    calls, evals = [], []

    def eval_fn(run, train_records):
        evals.append((Path(run), train_records))
        rdir = Path(run).parent  # OUT/<strategy>/round-K or the shared OUT/round-0
        k = int(rdir.name.split("-")[1])
        return FIG8_ACC[rdir.parent.name if k else "premem"][k]

    kw = dict(strategies=("premem", "iid", "heuristic"), rounds=2, n_new=["1x"],
              sources=algorithm1.Sources(pool=pool, pool_name="holdout", train_fn=fake_train_fn(calls), eval_fn=eval_fn))
    res = fig8.run_fig8(base, out, **kw)
    assert json.loads((out / "fig8.json").read_text()) == res
    assert res["n_new"] == [8, 8] and res["seed_examples"] == 8
    for s, accs in FIG8_ACC.items():
        assert res["curves"][s] == [{"n_train": n, "test_accuracy": a, "round": k}
                                    for k, (n, a) in enumerate(zip([8, 16, 24], accs))]
    # round 0 trains once per strategy in the one shared folder (the real train function then returns at
    # once); premem alone asks for train records, and not in its last round
    assert sorted({c.run_dir for c in calls}) == sorted(
        [str(out / "round-0" / "run")] + [str(out / s / f"round-{k}" / "run") for s in FIG8_ACC for k in (1, 2)])
    assert [r for r, tr in evals if tr] == [out / "round-0" / "run", out / "premem" / "round-1" / "run"]
    # the ratio by hand: iid reaches premem's 0.4 (premem at 16 examples) between 16 (0.3) and 24 (0.45),
    # 2/3 of the way in log size: 16 * 1.5 ** (2/3) examples; premem's 0.5 is beyond iid's best 0.45
    r = res["sample_efficiency_ratio"]
    want = 16 * 1.5 ** (2 / 3) / 16
    assert r["geomean"] == pytest.approx(want) and [lv["accuracy"] for lv in r["levels"]] == [0.4]
    assert r["levels"][0]["iid"] == pytest.approx(16 * 1.5 ** (2 / 3)) and r["levels"][0]["premem"] == pytest.approx(16)
    assert r["at_final"] is None and r["lower_bound"] == pytest.approx(24 / 24)
    # the figure: one line per strategy through its points, log size axis, the ratio in the title
    assert all((out / f"fig8.{ext}").stat().st_size > 1000 for ext in ("png", "pdf"))
    ax = fig8.fig8_figure(res).axes[0]
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["PreMemAcc (ours)", "i.i.d.", "heuristic"]
    assert [ln.get_label() for ln in lines] == [t.get_text() for t in ax.get_legend().get_texts()]
    for ln, accs in zip(lines, FIG8_ACC.values()):
        assert list(ln.get_xdata()) == [8, 16, 24] and list(ln.get_ydata()) == accs
    assert ax.get_xscale() == "log" and list(ax.get_xticks()) == [8, 16, 24]
    assert ax.get_xlabel() == "number of training examples" and ax.get_ylabel() == "test accuracy"
    assert ax.get_title() == f"gsm8k: tiny-lm | iid/premem examples = {want:.2f}x" == "gsm8k: tiny-lm | iid/premem examples = 1.31x"
    # a rerun finds every round done: nothing trains or evaluates again
    calls.clear()
    evals.clear()
    assert fig8.run_fig8(base, out, **kw)["curves"] == res["curves"] and calls == [] and evals == []


# ----------------------------------------------------------------------------- the paper's Algorithm 1


def test_algorithm1_chooses_p_prime_among_d_train_only(tmp_path):
    base = tiny_cfg("models/tiny-lm", tmp_path / "recipe_run", max_train_examples=8)
    seed = data_mod.train_examples(base)
    seed_ids = {e["id"] for e in seed}
    pool = collectors.holdout_pool(data_mod.load_split(DataSettings(data=str(DEMO_DATA)), "train"), list(seed_ids), "gsm8k")
    # every curated row scores PreMemAcc 0.0 (< t): selected whenever it is a candidate
    kw = dict(strategy="premem", rounds=2, n_new=3,
              sources=algorithm1.Sources(pool=pool, pool_name="holdout", seed_examples=seed,
                                         train_fn=fake_train_fn([], curated_acc=0.0),
                                         eval_fn=lambda run, train_records: 0.5))
    select_all = algorithm1.Selection(select_from="all")
    algorithm1.run_algorithm1(base, tmp_path / "d_train", **kw)
    run1 = tmp_path / "d_train" / "round-1" / "run"
    curated = [i for i in runs.read_train_ids(run1) if i.startswith("curated/")]
    assert len(curated) == 3 and all(selection.premem_scores(run1)[i] == 0.0 for i in curated)
    sel = json.loads((tmp_path / "d_train" / "round-1" / "selection.json").read_text())
    assert set(sel["scores"]) == seed_ids and sel["n_examples"] == 8 and sel["select_from"] == "original"
    assert sel["selected"] and not any(i.startswith("curated/") for i in sel["selected"])
    assert sel["selected"] == [i for i in sel["scores"] if sel["scores"][i] < 0.75]
    assert sel["mem_threshold"] == -2.4
    # select_from "all" (the kit's earlier rule): the same run's curated rows are chosen too
    algorithm1.run_algorithm1(base, tmp_path / "all", selection=select_all, **kw)
    sel_all = json.loads((tmp_path / "all" / "round-1" / "selection.json").read_text())
    assert sel_all["n_examples"] == 11 and {i for i in sel_all["selected"] if i.startswith("curated/")} == {
        i for i in runs.read_train_ids(tmp_path / "all" / "round-1" / "run") if i.startswith("curated/")}
    # a folder written before select_from existed was made with "all": resuming it by default is an error
    old = tmp_path / "all" / "algo1.json"
    old.write_text(json.dumps({k: v for k, v in json.loads(old.read_text()).items() if k != "select_from"}))
    with pytest.raises(CurationError, match="select_from: 'all' -> 'original'"):
        algorithm1.run_algorithm1(base, tmp_path / "all", **kw)
    algorithm1.run_algorithm1(base, tmp_path / "all", selection=select_all, **kw)  # resumes: every round done


def test_memorization_threshold_is_the_tasks_unless_given(tmp_path, capsys):
    """The authors' curation notebooks: GSM8K -2.4 (gsm8k_calculate_unmemorized_acc.ipynb), MATH -1.7
    (math_amrith.ipynb); Figure 4's GSM8K -2.3 is --mem-threshold -2.3."""
    ppl = math.exp(math.exp(-2.0))  # loglog -2.0: memorized under MATH's -1.7, not under GSM8K's -2.4
    for task, want in (("gsm8k", 1.0), ("math", 0.0)):
        run = write_synthetic_run(tmp_path / task, [4, 8], [[1.0], [1.0]], [[ppl], [ppl]],
                                  config=tiny_cfg("unused-model", tmp_path / task, task=task))
        assert selection.premem_scores(run) == {"gsm8k/train/0": want}
    assert selection.premem_scores(tmp_path / "math", -2.3) == {"gsm8k/train/0": 1.0}
    # loglog -2.35: memorized under Figure 4's -2.3, not under the curation default -2.4
    mid = math.exp(math.exp(-2.35))
    run = write_synthetic_run(tmp_path / "mid", [4, 8], [[1.0], [1.0]], [[mid], [mid]],
                              config=tiny_cfg("unused-model", tmp_path / "mid", task="gsm8k"))
    assert selection.premem_scores(run) == {"gsm8k/train/0": 1.0}
    assert selection.premem_scores(run, -2.3) == {"gsm8k/train/0": 0.0}
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"threshold_loglog": -1.9}))
    assert selection.resolve_mem_threshold("gsm8k") == (-2.4, "gsm8k default")
    assert selection.resolve_mem_threshold("math") == (-1.7, "math default")
    assert selection.resolve_mem_threshold("gsm8k", threshold_from=summary) == (-1.9, f"from {summary}")
    assert selection.resolve_mem_threshold("math", -2.5) == (-2.5, "given")
    with pytest.raises(CurationError, match="not both"):
        selection.resolve_mem_threshold("math", -2.5, summary)
    # Algorithm 1 and its command-line options: the task's unless given
    assert algorithm1.Algorithm1(config.Config(task="math"), tmp_path, "premem", [1], []).threshold == -1.7
    assert algorithm1.Algorithm1(config.Config(task="gsm8k"), tmp_path, "premem", [1], []).threshold == -2.4
    assert algorithm1.LoopOptions(n_new=[1]).selection("math").mem_threshold == -1.7
    assert algorithm1.LoopOptions(n_new=[1], threshold_from=str(summary)).selection("math").mem_threshold == -1.9
    # curate.py select: GSM8K's -2.4 keeps the example out of P'; --threshold-from -1.9 puts it in
    out = tmp_path / "sel.json"
    base = ["select", str(tmp_path / "gsm8k"), "--strategy", "premem", "--out", str(out)]
    assert curate.main(base) == 0 and json.loads(out.read_text())["selected"] == []
    assert curate.main([*base, "--threshold-from", str(summary)]) == 0
    got = json.loads(out.read_text())
    assert (got["selected"], got["mem_threshold"], got["mem_threshold_source"]) == (["gsm8k/train/0"], -1.9,
                                                                                     f"from {summary}")
    assert curate.main([*base, "--threshold-from", str(tmp_path / "nope.json")]) == 2
    assert "nope.json: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        curate.main([*base, "--threshold-from", str(summary), "--mem-threshold", "-2"])
    assert "not allowed with argument" in capsys.readouterr().err
    helptext = curate.build_parser()._subparsers._group_actions[0].choices["algo1"].format_help()
    assert "default: the task's, GSM8K -2.4, MATH -1.7" in " ".join(helptext.split())
