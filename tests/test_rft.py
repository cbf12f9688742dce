"""RFT data (premem_kit arith.py, rft.py, rft_sampling.py: curate.py rft) and the SFT data-scaling
command (premem_kit/curation/scaling.py: curate.py scaling): the safe evaluator, annotation checks, dedupe,
pooling, pass@k, the sample cache, the log-linear fit, and the commands end to end on the tiny model (sampling, JSONL + report, training on the JSONL, scaling)."""
import json
import math
import random
from fractions import Fraction
from math import comb

import pandas as pd
import pytest
import yaml

import curate
from conftest import tiny_cfg
from premem_kit.core import config
from premem_kit.tasks import arith
from premem_kit.tasks import data
from premem_kit.tasks import grading
from premem_kit.core import records
from premem_kit.curation import rft
from premem_kit.core import runs
from premem_kit.curation import scaling
from premem_kit.evaluation.evaluation import EvalOptions, evaluate_run
from premem_kit.training.trainer import run_training
from premem_kit.core.config import DataSettings

# ----------------------------------------------------------------------------- safe evaluator


@pytest.mark.parametrize("expr,value", [
    ("2+3*4", 14), ("(1+2)**2", 9), ("1,000/4", 250), (".5*4", 2), ("2**-1", Fraction(1, 2)),
    ("05+1", 6), ("12/60", Fraction(1, 5)), ("-3+5", 2), ("1e3", 1000), ("0.1+0.2", Fraction(3, 10)),
    ("2 ** 0.5 * 2 ** 0.5", None),
])
def test_safe_eval_computes_exact_arithmetic(expr, value):
    v = arith.safe_eval(expr)
    if value is None:  # non-integer power: float, within round-off
        assert abs(float(v) - 2) < 1e-12
    else:
        assert v == value and isinstance(v, Fraction)


@pytest.mark.parametrize("expr,why", [
    ("x+1", "Name is not allowed"),
    ("__import__('os').system('ls')", "Call is not allowed"),
    ("(1).real", "Attribute is not allowed"),
    ("abs(-1)", "Call is not allowed"),
    ("[1][0]", "Subscript is not allowed"),
    ("1<2", "Compare is not allowed"),
    ("7//2", "FloorDiv is not allowed"),
    ("lambda: 1", "Lambda is not allowed"),
    ("2**1000", "exponent 1000 is larger than 100"),
    ("9**9**9", "is larger than 100"),
    ("(10**30)**100", "too large"),
    ("10**20*10**20", "too large"),
    ("1e400", "not finite"),
    ("'a'", "not a plain decimal"),
    ("1j", "not a plain decimal"),
    ("0x10", "not a plain decimal"),
    ("1_000", "not a plain decimal"),
    ("1/0", "division by zero"),
    ("2" * 300, "longer than 200"),
    ("3x4", "does not parse"),
    ("", "empty"),
])
def test_safe_eval_refuses_everything_but_plain_arithmetic(expr, why):
    with pytest.raises(arith.ExpressionError, match=why):
        arith.safe_eval(expr)


def test_safe_eval_never_calls_python_eval(monkeypatch):
    import builtins

    def boom(*a, **k):
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", boom)
    monkeypatch.setattr(builtins, "exec", boom)
    assert arith.safe_eval("(48/2)+1") == 25


# (annotation, ok by the rules reference (Yuan et al.: first two sides, |v - b| < 1e-3), rounding (the
# kit's earlier rule: relative 1e-4 or rounds to the shown digits), exact)
@pytest.mark.parametrize("ann,ref,rnd,exact", [
    ("48/2=24", True, True, True), (" 48 / 2 = 24 ", True, True, True), ("12/60=0.2", True, True, True),
    ("48/2=25", False, False, False), ("2+2=5", False, False, False), ("100/3=33.4", False, False, False),
    ("1+2.0005=3", True, True, False),       # off by 0.0005: inside 1e-3 and inside the shown precision
    ("1/3=0.3338", True, False, False),      # off by 0.00047: inside 1e-3, outside the 4 shown digits
    ("100/3=33.333", True, True, False),     # off by 0.00033
    ("100/3=33.33", False, True, False),     # off by 0.0033: rounds to the shown digits, > 1e-3
    ("100/3=33", False, True, False),        # GSM8K writes this; only rounding accepts it
    ("1e6*3=3000001", False, True, False),   # relative 3e-7, absolute 1
    ("1,000*2=2,000", False, True, True),    # Python's eval makes "1,000*2" a tuple: the reference fails
    ("1000*2=2,000", False, True, True),     # float("2,000") fails
    ("05+1=6", False, True, True),           # "05" is a syntax error in Python
    ("2+2=4=4.0", True, True, True),
    ("2+2=4=5", True, False, False),         # the reference never looks past the second side
    ("5*$3=15", False, False, False), ("48/2", False, False, False), ("abs(-2)=2", False, False, False),
    ("2+2=nan", False, False, False), ("7//2=3", False, False, False),
])
def test_check_annotation_by_rule(ann, ref, rnd, exact):
    assert arith.check_annotation(ann, "reference")[0] is ref
    assert arith.check_annotation(ann, "rounding")[0] is rnd
    assert arith.check_annotation(ann, "exact")[0] is exact
    assert arith.check_annotation(ann)[0] is ref  # the reference rule is the default


def test_reference_check_reads_annotations_as_yuan_et_al():
    unclosed = "<<2*3=6>>6 and <<4*5=20 unclosed\n#### 26"
    assert rft.check_path(unclosed) == (True, "")  # their <<([^>]*)>> never sees the unclosed one
    assert rft.check_path(unclosed, arith="rounding") == (False, "unclosed or nested <<...>> annotation")
    assert rft.check_path(unclosed, arith="exact")[0] is False
    assert rft.check_path("<<1/3=0.3338>>\n#### 1") == (True, "")
    assert rft.check_path("<<1/3=0.3338>>\n#### 1", arith="rounding")[0] is False
    with pytest.raises(ValueError, match="expected one of reference, rounding, exact"):
        arith.check_annotation("1=1", "loose")


def test_levenshtein_matches_dynamic_programming():
    def dp(a, b):
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        return prev[-1]

    assert rft.levenshtein("kitten", "sitting") == 3
    assert rft.levenshtein("", "abc") == 3 and rft.levenshtein("abc", "abc") == 0
    r = random.Random(0)
    for _ in range(300):
        a = "".join(r.choice("ab<>=1 ") for _ in range(r.randint(0, 90)))
        b = "".join(r.choice("ab<>=12") for _ in range(r.randint(0, 90)))
        assert rft.levenshtein(a, b) == dp(a, b)


# ----------------------------------------------------------------------------- paths, dedupe, pooling

ORIGINAL = ("Ann buys 2*3 = <<2*3=6>>6 apples and 4*5 = <<4*5=20>>20 pears.\n"
            "She has 6+20 = <<6+20=26>>26 fruits.\n#### 26")
EX = {"id": "toy/train/0", "question": "How many fruits?", "solution": ORIGINAL, "reference": "26"}
SAME_EQS_OTHER_WORDS = " Apples: <<2*3=6>>6. Pears: <<4*5=20>>20. Total <<6+20=26>>26\n#### 26"
OTHER_ORDER = " First the pears, 4*5 = <<4*5=20>>20, then apples 2*3 = <<2*3=6>>6; <<6+20=26>>26\n#### 26"
OTHER_ORDER_SPACED = (" We count pears <<4 * 5 = 20>>20 and apples <<2*3 = 6>>6 and everything together "
                      "makes <<6 + 20=26>>26 fruits in the basket\n#### 26")
WRONG_ANNOTATION = " <<2*3=6>>6 apples, <<4*5=21>>20 pears, <<6+20=26>>26\n#### 26"
WRONG_ANSWER = " <<2*3=6>>6 apples, <<4*5=20>>20 pears, <<6+20=27>>27\n#### 27"
TRAILING = " Pears <<4*5=20>>20 apples <<2*3=6>>6 sum <<20+6=26>>26\n#### 26\nThe end, more junk"


def test_keys_collapse_wording_and_whitespace_but_not_order():
    k = rft.path_key(ORIGINAL)
    assert k == ("2*3=6", "4*5=20", "6+20=26")
    assert rft.path_key(SAME_EQS_OTHER_WORDS) == k
    assert rft.path_key(OTHER_ORDER) == ("4*5=20", "2*3=6", "6+20=26") != k
    assert rft.path_key(OTHER_ORDER_SPACED) == rft.path_key(OTHER_ORDER)
    for rule in arith.ARITH_CHECKS:
        assert rft.check_path(WRONG_ANNOTATION, arith=rule) == (False, "<<4*5=21>>: left side is 20, not 21")
    assert rft.clean_solution(TRAILING) == TRAILING.strip().split("\nThe end")[0]


def test_reference_dedupe_keeps_a_sample_with_the_gold_equations():
    orig = rft.Candidate(ORIGINAL, rft.path_key(ORIGINAL), {"origin": "original"})
    cands = [rft.Candidate(t, rft.path_key(t), {"i": i})
             for i, t in enumerate([SAME_EQS_OTHER_WORDS, OTHER_ORDER, OTHER_ORDER_SPACED, TRAILING])]
    kept = rft.dedupe_paths(cands, [orig])  # the default: Yuan et al.'s rule
    assert kept == rft.dedupe_reference(cands, [orig])
    # the sample with the original's equations is an extra path; the order-swapped pair shares one key:
    # OTHER_ORDER_SPACED replaces OTHER_ORDER only if farther from the other kept samples (not the original)
    d_spaced = rft.levenshtein(OTHER_ORDER_SPACED, SAME_EQS_OTHER_WORDS)
    d_order = rft.levenshtein(OTHER_ORDER, SAME_EQS_OTHER_WORDS)
    assert d_spaced > d_order
    assert [c.prov.get("i") for c in kept] == [None, 0, 2, 3]
    # strict (the kit's earlier rule): the original's key is a seen key, so that sample is dropped
    assert [c.prov.get("i") for c in rft.dedupe_paths(cands, [orig], "strict")] == [None, 2, 3]
    # the reference's distances leave the original out: here strict and reference choose differently
    o = rft.Candidate("b" * 20, ("o",))
    near = rft.Candidate("aaaa", ("x",), {"i": "near"})
    a = rft.Candidate("b" * 19 + "e", ("k",), {"i": "a"})  # far from near (20), next to the original (1)
    b = rft.Candidate("aaaa" + "c" * 10, ("k",), {"i": "b"})  # 10 from near, 14 from the original
    assert [c.prov.get("i") for c in rft.dedupe_paths([near, a, b], [o])] == [None, "near", "a"]
    assert [c.prov.get("i") for c in rft.dedupe_paths([near, a, b], [o], "strict")] == [None, "near", "b"]
    # a later sample replaces the kept one only when strictly farther
    tie = [rft.Candidate("x", ("u",), {"i": "u"}), rft.Candidate("ab", ("t",), {"i": 0}),
           rft.Candidate("ba", ("t",), {"i": 1})]
    assert rft.dedupe_paths(tie)[-1].prov["i"] == 0
    with pytest.raises(ValueError, match="expected one of reference, strict"):
        rft.dedupe_paths(cands, [orig], "loose")


def test_strict_dedupe_keeps_the_path_farthest_from_those_kept():
    orig = rft.Candidate(ORIGINAL, rft.path_key(ORIGINAL), {"origin": "original"})
    cands = [rft.Candidate(t, rft.path_key(t), {"i": i})
             for i, t in enumerate([SAME_EQS_OTHER_WORDS, OTHER_ORDER, OTHER_ORDER_SPACED, TRAILING])]
    kept = rft.dedupe_paths(cands, [orig], "strict")
    # same equations as the original: not added; the two order-swapped paths share one key
    assert [c.prov.get("i") for c in kept] == [None, 2, 3]
    d1 = rft.levenshtein(OTHER_ORDER, ORIGINAL)
    d2 = rft.levenshtein(OTHER_ORDER_SPACED, ORIGINAL)
    assert d2 > d1  # the longer rewording is farther, so it is the one kept
    # the sum runs over every path kept so far: with a second kept path the choice can flip
    near = rft.Candidate(OTHER_ORDER_SPACED[:-9] + " fruits\n#### 26", ("x",), {"i": "near"})
    group = [rft.Candidate(OTHER_ORDER, ("k",), {"i": "a"}), rft.Candidate(OTHER_ORDER_SPACED, ("k",), {"i": "b"})]
    kept2 = rft.dedupe_paths(group, [orig, near], "strict")
    sums = {c.prov["i"]: rft.levenshtein(c.text, ORIGINAL) + rft.levenshtein(c.text, near.text) for c in group}
    assert kept2[-1].prov["i"] == max(sums, key=sums.get) == "a"
    # ties go to the earliest
    tie = [rft.Candidate("ab", ("t",), {"i": 0}), rft.Candidate("ba", ("t",), {"i": 1})]
    assert rft.dedupe_paths(tie, [rft.Candidate("cc", ("o",))], "strict")[-1].prov["i"] == 0


def test_build_rows_filters_dedupes_and_pools_two_models():
    a = rft.Source("A@10", {EX["id"]: [SAME_EQS_OTHER_WORDS, OTHER_ORDER, WRONG_ANNOTATION, WRONG_ANSWER]},
                   {"model": "model-a", "run": "runs/a", "step": 10})
    b = rft.Source("B@20", {EX["id"]: [OTHER_ORDER, TRAILING, "garbage", WRONG_ANSWER, "ignored: past k"]},
                   {"model": "model-b", "run": "runs/b", "step": 20})
    rows, st = rft.build_rft_rows([EX], [a, b], "gsm8k", k=4)
    # the default (Yuan et al.'s dedupe): A's first sample, with the original's equations, is kept too
    assert (st["dedupe"], st["arith_check"]) == ("reference", "reference")
    assert [(r["origin"], r["model"], r["sample_index"]) for r in rows] == [
        ("original", None, None), ("sample", "model-a", 0), ("sample", "model-a", 1), ("sample", "model-b", 1)]
    assert [r["id"] for r in rows] == ["toy/train/0/rft/original", "toy/train/0/rft/m0-0", "toy/train/0/rft/m0-1",
                                       "toy/train/0/rft/m1-1"]
    assert rows[0]["answer"] == ORIGINAL and rows[3]["answer"] == TRAILING.strip().split("\nThe end")[0]
    assert all(r["source_id"] == EX["id"] and r["question"] == EX["question"] for r in rows)
    # A: 3 correct answers, one with a wrong annotation; B: 2 correct
    assert st["filter"] == {"samples": 8, "correct": 5, "correct_valid_equations": 4, "wrong_equations": 1}
    assert st["accuracy"] == {"A@10": 0.75, "B@20": 0.5}
    assert st["distinct_paths_per_question"]["mean"] == 4 and st["distinct_paths_per_question"]["mean_sampled_only"] == 3
    # per-k distinct paths: the original plus the samples' keys (k=1: A's gold-equation path, B's new one)
    assert st["distinct_paths_vs_k"] == {"1": 3, "2": 4, "4": 4}
    # strict (the kit's earlier rule): A's first sample repeats the original's equations and is dropped
    rows_s, st_s = rft.build_rft_rows([EX], [a, b], "gsm8k", k=4, dedupe="strict", arith_check="rounding")
    assert [(r["origin"], r["model"], r["sample_index"]) for r in rows_s] == [
        ("original", None, None), ("sample", "model-a", 1), ("sample", "model-b", 1)]
    assert st_s["distinct_paths_per_question"]["mean"] == 3 and st_s["distinct_paths_vs_k"] == {"1": 2, "2": 3, "4": 3}
    assert (st_s["dedupe"], st_s["arith_check"]) == ("strict", "rounding")
    assert st["pass_at_k"]["A@10"] == {"1": 0.75, "2": 1.0, "4": 1.0}
    assert st["pass_at_k"]["B@20"]["1"] == 0.5 and st["pass_at_k"]["B@20"]["2"] == pytest.approx(1 - 1 / 6)
    assert st["pass_at_k"]["pooled"]["1"] == pytest.approx(5 / 8)
    # only A: B's new path is missing; no original: only the samples
    rows_a, _ = rft.build_rft_rows([EX], [a], "gsm8k", k=4)
    assert [r["sample_index"] for r in rows_a] == [None, 0, 1]
    assert [r["sample_index"] for r in rft.build_rft_rows([EX], [a], "gsm8k", k=4, dedupe="strict")[0]] == [None, 1]
    rows_no, st_no = rft.build_rft_rows([EX], [a], "gsm8k", k=4, add_original=False, dedupe="strict")
    assert [r["sample_index"] for r in rows_no] == [0, 1]  # without the original its equations are new
    with pytest.raises(rft.CacheError, match="has 4 samples, 5 needed"):
        rft.build_rft_rows([EX], [a], "gsm8k", k=5)


def test_pass_at_k_is_the_unbiased_estimator():
    for n, c, k in [(4, 1, 1), (10, 3, 2), (100, 7, 10), (100, 0, 50), (5, 5, 5), (20, 19, 3)]:
        assert rft.pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)
    assert rft.k_grid(100) == [1, 2, 4, 8, 16, 32, 64, 100] and rft.k_grid(4) == [1, 2, 4]
    with pytest.raises(ValueError):
        rft.pass_at_k(2, 1, 3)


def test_log_linear_fit_recovers_synthetic_slope():
    ns = [2 ** i for i in range(5, 11)]
    fit = scaling.fit_log_linear(ns, [0.04 * math.log2(n) - 0.1 for n in ns])
    assert fit["a"] == pytest.approx(0.04) and fit["b"] == pytest.approx(-0.1) and fit["r2"] == pytest.approx(1)
    noisy = [0.04 * math.log2(n) - 0.1 + (0.01 if i % 2 else -0.01) for i, n in enumerate(ns)]
    f2 = scaling.fit_log_linear(ns, noisy)
    assert abs(f2["slope_per_doubling"] - 0.04) < 0.005 and 0.9 < f2["r2"] < 1
    with pytest.raises(ValueError, match="two different data sizes"):
        scaling.fit_log_linear([64, 64], [0.1, 0.2])


# ----------------------------------------------------------------------------- sample cache


def _fake_sampler(calls):
    def fn(prompts, n, seed):
        calls.append((len(prompts), n))
        return [[f"{p[:12]}|{seed}|{j}" for j in range(n)] for p in prompts]
    return fn


def test_sample_cache_resumes_and_extends(tmp_path):
    exs = [{"id": f"q{i}", "question": f"question {i}"} for i in range(5)]
    meta = {"model": "m", "step": 3, "temperature": 0.7, "top_p": 1.0, "max_new_tokens": 9, "seed": 0}
    ref = rft.SampleCache(tmp_path / "ref.jsonl", meta)
    calls = []
    assert rft.fill_cache(ref, exs, 4, _fake_sampler(calls), batch_size=2, samples_per_call=2) == 20
    assert calls == [(2, 2), (2, 2), (2, 2), (2, 2), (1, 2), (1, 2)]

    # interrupted after 3 generate calls (question batch 0 done, batch 1 half done), then resumed
    path = tmp_path / "c.jsonl"
    c = rft.SampleCache(path, meta)
    n_calls = []

    def dies(prompts, n, seed):
        if len(n_calls) == 3:
            raise KeyboardInterrupt
        n_calls.append(1)
        return _fake_sampler([])(prompts, n, seed)

    with pytest.raises(KeyboardInterrupt):
        rft.fill_cache(c, exs, 4, dies, batch_size=2, samples_per_call=2)
    with open(path, "a") as f:  # a torn last line, as a kill during the append leaves
        f.write('{"id": "q4", "first_in')
    c2 = rft.SampleCache(path, meta)
    assert not path.read_text().endswith("first_in") and [c2.count(e["id"]) for e in exs] == [4, 4, 2, 2, 0]
    calls = []
    assert rft.fill_cache(c2, exs, 4, _fake_sampler(calls), batch_size=2, samples_per_call=2) == 8
    assert calls == [(1, 2), (1, 2), (2, 2)]  # q4 from sample 0, then q2 and q3 from sample 2
    assert all(rft.SampleCache(path, meta).samples(e["id"]) == ref.samples(e["id"]) for e in exs)
    # nothing to do for a smaller or equal k; a larger k samples only the missing ones
    calls = []
    assert rft.fill_cache(c2, exs, 3, _fake_sampler(calls)) == 0 and calls == []
    assert rft.fill_cache(c2, exs, 6, _fake_sampler(calls), batch_size=8) == 10 and calls == [(5, 2)]
    assert all(c2.samples(e["id"])[:4] == ref.samples(e["id"]) and c2.count(e["id"]) == 6 for e in exs)
    # other settings in an existing file, or a file that is not a cache: clear errors
    with pytest.raises(rft.CacheError, match="made with other settings"):
        rft.SampleCache(path, {**meta, "temperature": 1.0})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"meta": meta}) + '\nnot json\n{"id": "q", "first_index": 0, "samples": []}\n')
    with pytest.raises(rft.CacheError, match="bad.jsonl, line 2: not valid JSON"):
        rft.SampleCache(bad, meta)


# ----------------------------------------------------------------------------- commands on the tiny model


@pytest.fixture(scope="module")
def src_run(tmp_path_factory, tiny_model):
    """A tiny run trained for one step on 4 examples (the RFT source model)."""
    run = tmp_path_factory.mktemp("rft") / "src"
    run_training(tiny_cfg(tiny_model, run, max_train_examples=4, batch_size=4, micro_batch_size=2,
                                num_epochs=1))
    return run


def _rft(run, out, *extra):
    return curate.main(["rft", "--from", str(run), "--from", f"{run}:0", "--out", str(out), "--k", "2",
                        "--max-new-tokens", "12", "--batch-size", "4", "--no-figures", *extra])


def test_curate_rft_end_to_end_and_train_on_its_output(tmp_path, src_run, tiny_model, capsys):
    out = tmp_path / "rft" / "gsm8k_rft.jsonl"
    assert curate.main(["rft", "--from", str(src_run), "--from", f"{src_run}:0", "--out", str(out),
                        "--k", "2", "--max-new-tokens", "12", "--batch-size", "4"]) == 0
    rep = json.loads((tmp_path / "rft" / "gsm8k_rft.report.json").read_text())
    assert (tmp_path / "rft" / "gsm8k_rft.report.png").stat().st_size > 1000
    ids = json.loads((src_run / "subset_ids.json").read_text())
    assert rep["questions"] == 4 and rep["k"] == 2 and [s["name"] for s in rep["sources"]] == ["src@1", "src@0"]
    assert [s["new_samples"] for s in rep["sources"]] == [8, 8]
    # Yuan et al.'s sampler by default: top-k 50 (Hugging Face's default), top-p 1.0, temperature 0.7
    assert rep["sampling"] == {"temperature": 0.7, "top_p": 1.0, "top_k": 50, "seed": 0}
    assert all(".k50.m12." in s["cache"] for s in rep["sources"])
    # the cached samples, graded here independently, give the report's accuracy and pass@1
    split = {e["id"]: e for e in data.load_split(DataSettings(data=tiny_cfg(tiny_model, src_run).data), "train")}
    for s in rep["sources"]:
        cache = rft.SampleCache(s["cache"], {})
        got = [cache.samples(i) for i in ids]
        assert all(len(x) == 2 for x in got) and any(t.strip() for x in got for t in x)
        correct = sum(grading.grade("gsm8k", rft.clean_solution(t), split[i]["reference"])[1] == "correct"
                      for i, x in zip(ids, got) for t in x)
        assert rep["accuracy"][s["name"]] == pytest.approx(correct / 8) == rep["pass_at_k"][s["name"]]["1"]
    assert set(rep["pass_at_k"]) == {"src@1", "src@0", "pooled"} and list(rep["pass_at_k"]["pooled"]) == ["1", "2", "4"]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    # every question has its original; its distinct sampled paths come on top
    assert rep["rows"] == len(rows) == 4 + round(4 * rep["distinct_paths_per_question"]["mean_sampled_only"])
    assert len(rows) == sum(int(k) * v for k, v in rep["distinct_paths_per_question"]["distribution"].items())
    originals = [r for r in rows if r["origin"] == "original"]
    assert [r["source_id"] for r in originals] == sorted(ids, key=lambda i: int(i.rsplit("/", 1)[1]))
    assert all(r["answer"] == split[r["source_id"]]["solution"].strip() for r in originals)
    assert "distinct paths per question" in capsys.readouterr().out

    # the same command again samples nothing; a larger k samples only the missing third sample
    before = out.read_text()
    assert _rft(src_run, out) == 0
    rep2 = json.loads((tmp_path / "rft" / "gsm8k_rft.report.json").read_text())
    assert [s["new_samples"] for s in rep2["sources"]] == [0, 0] and out.read_text() == before
    first_two = [rft.SampleCache(rep["sources"][0]["cache"], {}).samples(i) for i in ids]
    k3 = ["rft", "--from", str(src_run), "--out", str(tmp_path / "k3.jsonl"), "--k", "3", "--max-new-tokens", "12",
          "--batch-size", "4", "--no-figures"]
    assert curate.main(k3) == 0
    rep3 = json.loads((tmp_path / "k3.report.json").read_text())
    assert [s["new_samples"] for s in rep3["sources"]] == [4] and rep3["filter"]["samples"] == 12
    c = rft.SampleCache(rep["sources"][0]["cache"], {})
    assert all(c.count(i) == 3 for i in ids)
    assert [c.samples(i)[:2] for i in ids] == first_two  # the cached samples are kept, one more drawn

    # train.py unchanged on the written JSONL (replace mode), then evaluate.py as usual
    run = tmp_path / "on_rft"
    cfg = tiny_cfg(tiny_model, run, train_file=str(out), train_file_mode="replace", max_train_examples=None,
                   batch_size=4, micro_batch_size=2, num_epochs=1, eval_test_examples=2, eval_train_examples=2,
                   eval_max_new_tokens=6, eval_samples=1)
    summary = run_training(cfg)
    assert summary["examples"] == len(rows)
    assert sorted(json.loads((run / "subset_ids.json").read_text())) == sorted(r["id"] for r in rows)
    res = evaluate_run(run, EvalOptions(settings={"eval_base_model": False}))
    assert {(r["split"], r["n"]) for r in res} == {("train", 2), ("test", 2)}


def test_temperature_zero_samples_the_greedy_answer(tiny_model):
    """eval_temperature 0 (the RFT recipe's greedy test accuracy, as Yuan et al. report it): every sample is
    the greedy completion."""
    from premem_kit.models import inference
    from premem_kit.models import loading as models

    cfg = tiny_cfg(tiny_model, "unused")
    tok, model = models.load_tokenizer(cfg.model), models.load_base_model(cfg)
    prompts = ["Tom has 3 apples.\nAnswer:", "What is 2 + 5?\nAnswer:"]
    greedy, _ = inference.sample(model, tok, prompts, greedy=True, max_new_tokens=8, progress=False)
    zero, _ = inference.sample(model, tok, prompts, n=3, temperature=0, max_new_tokens=8, progress=False)
    assert [len(g) for g in greedy] == [1, 1] and zero == [g * 3 for g in greedy]
    # a sampled call with top-k on draws from the model (not greedy), seeded
    a, _ = inference.sample(model, tok, prompts, n=2, temperature=1.0, top_p=1.0, top_k=50, max_new_tokens=8,
                            seed=3, progress=False)
    b, _ = inference.sample(model, tok, prompts, n=2, temperature=1.0, top_p=1.0, top_k=50, max_new_tokens=8,
                            seed=3, progress=False)
    assert a == b and [len(x) for x in a] == [2, 2]


def test_curate_rft_reads_a_filled_cache_filters_and_dedupes(tmp_path, src_run, tiny_model):
    """Samples already in the cache (here written by hand) are used as they are: no model is loaded."""
    ids = json.loads((src_run / "subset_ids.json").read_text())
    split = {e["id"]: e for e in data.load_split(DataSettings(data=tiny_cfg(tiny_model, src_run).data), "train")}
    meta = {"run": str(src_run), "step": 1, "model": str(tiny_model), "temperature": 0.7, "top_p": 1.0,
            "max_new_tokens": 12, "seed": 5, "top_k": 50}
    cdir = tmp_path / "cache"
    # the default sampler is Yuan et al.'s (top-k 50): its cache file names the top-k
    assert rft.cache_name("src", 1, 0.7, 1.0, 12, 5, 50) == "src.step-000001.T0.7.p1.k50.m12.s5.jsonl"
    assert rft.cache_name("src", 1, 0.7, 1.0, 12, 5) == "src.step-000001.T0.7.p1.m12.s5.jsonl"  # top-k off
    cache = rft.SampleCache(cdir / rft.cache_name("src", 1, 0.7, 1.0, 12, 5, 50), meta)
    want_new = 0
    for i in ids:
        sol = split[i]["solution"]
        eqs = rft.equations(sol)
        reworded = " So: " + " then ".join(f"<<{e}>>" for e in eqs) + "\n#### " + split[i]["reference"]
        wrong = sol.replace(f"<<{eqs[0]}>>", f"<<{eqs[0]}*2+1>>") if eqs else "no"  # result r shown as 2r+1
        flipped = " ".join(f"<<{e}>>" for e in reversed(eqs)) + "\n#### " + split[i]["reference"]
        want_new += len(eqs) > 1
        cache.append([{"id": i, "first_index": 0, "seed": 0, "samples": [" " + reworded, wrong, flipped]}])
    args = ["rft", "--from", f"{src_run}:1", "--k", "3", "--max-new-tokens", "12", "--seed", "5", "--cache-dir",
            str(cdir), "--no-figures"]
    out = tmp_path / "filled.jsonl"
    assert curate.main([*args, "--out", str(out)]) == 0
    rep = json.loads((tmp_path / "filled.report.json").read_text())
    assert rep["sources"][0]["new_samples"] == 0 and (rep["dedupe"], rep["arith_check"]) == ("reference", "reference")
    n_eqs = [len(rft.equations(split[i]["solution"])) for i in ids]
    assert rep["filter"]["wrong_equations"] == sum(n > 0 for n in n_eqs)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    sampled = [r for r in rows if r["origin"] == "sample"]
    # the default (Yuan et al.): the reworded sample, with the original's equations, is an extra path of
    # every question; the flipped one too when its order differs (more than one equation)
    assert [r["sample_index"] for r in sampled if r["sample_index"] == 0] == [0] * len(ids)
    assert len(sampled) == len(ids) + want_new and all(r["step"] == 1 for r in sampled)
    assert all(rft.path_key(r["answer"]) == rft.path_key(split[r["source_id"]]["solution"])
               for r in sampled if r["sample_index"] == 0)
    assert data.load_extra_file(out, "gsm8k")[0]["meta"]["origin"] == "original"
    # --dedupe strict (the kit's earlier rule): only the flipped paths are new
    strict = tmp_path / "strict.jsonl"
    assert curate.main([*args, "--out", str(strict), "--dedupe", "strict"]) == 0
    sampled = [r for r in map(json.loads, strict.read_text().splitlines()) if r["origin"] == "sample"]
    assert len(sampled) == want_new and all(r["sample_index"] == 2 and r["step"] == 1 for r in sampled)
    assert all(rft.path_key(r["answer"]) == tuple(reversed(rft.path_key(split[r["source_id"]]["solution"])))
               for r in sampled)
    assert json.loads((tmp_path / "strict.report.json").read_text())["dedupe"] == "strict"


def test_curate_rft_bad_inputs(tmp_path, src_run, capsys):
    assert curate.main(["rft", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err
    assert curate.main(["rft", "--from", f"{src_run}:7", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no complete checkpoint-7 (complete checkpoints: 1; 0 = base model)" in capsys.readouterr().err
    assert curate.main(["rft", "--from", str(src_run), "--from", f"{src_run}:1", "--out", "x.jsonl"]) == 2
    assert "the same checkpoint is given twice" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: an unknown rule is a usage error
        curate.main(["rft", "--from", str(src_run), "--out", "x.jsonl", "--dedupe", "loose"])
    assert "invalid choice: 'loose'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # rejected while parsing
        curate.main(["rft", "--from", str(src_run), "--out", "x.jsonl", "--k", "0"])
    assert e.value.code == 2 and "argument --k: expected a whole number >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_curate_scaling_trains_nested_fractions_and_fits(tmp_path, tiny_model, capsys):
    cfg = tiny_cfg(tiny_model, tmp_path / "scaling", max_train_examples=8, batch_size=4, micro_batch_size=2,
                   num_epochs=1, eval_test_examples=4, eval_samples=2, eval_max_new_tokens=6)
    path = tmp_path / "scaling.yaml"
    path.write_text(config.dump(cfg))
    out = tmp_path / "scaling_out"
    args = ["scaling", str(path), "--fractions", "1/2", "1", "eval_seed=3", "--out", str(out), "eval_samples=1"]
    assert curate.main(args) == 0
    res = json.loads((out / "scaling.json").read_text())
    assert [(p["fraction"], p["n_train"], p["step"]) for p in res["points"]] == [("1/2", 4, 1), ("1", 8, 2)]
    assert res["overrides"] == {"eval_seed": 3, "eval_samples": 1} and res["accuracy"] == "greedy"
    assert runs.read_config(out / "frac-1").eval_samples == 1
    half = json.loads((out / "frac-1_2" / "subset_ids.json").read_text())
    full = json.loads((out / "frac-1" / "subset_ids.json").read_text())
    assert full[:4] == half and len(set(full)) == 8  # nested seeded subsets
    # greedy by default (Yuan et al.): the greedy record's outcomes give the accuracy; nothing is sampled
    for p in res["points"]:
        g = pd.read_parquet(runs.greedy_path(p["run_dir"], p["step"], "test"))
        assert len(g) == 4 == p["test_examples"] and p["test_accuracy"] == (g["outcome"] == "correct").mean()
        assert not runs.record_path(p["run_dir"], p["step"], "test").exists()
    assert "greedy test accuracy" in capsys.readouterr().out
    # the tiny model answers nothing right: plant greedy outcomes (3 of 4 correct at fraction 1) and rerun;
    # training and evaluation are skipped, and the reported accuracy is read from the greedy record
    gpath = runs.greedy_path(out / "frac-1", 2, "test")
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(gpath)
    t = t.set_column(t.schema.get_field_index("outcome"), "outcome",
                     pa.array(["correct", "correct", "incorrect", "correct"]))
    records.write_table(gpath, t)
    assert curate.main(args) == 0
    res = json.loads((out / "scaling.json").read_text())
    a0, a1 = (p["test_accuracy"] for p in res["points"])
    assert (a0, a1) == (0.0, 0.75)
    fit = res["fit"]  # two points one doubling apart: the line goes through both
    assert fit["slope_per_doubling"] == pytest.approx(a1 - a0, abs=1e-9)
    assert fit["b"] == pytest.approx(a0 - 2 * (a1 - a0), abs=1e-9)
    from PIL import Image

    assert Image.open(out / "scaling.png").size[0] > 300 and (out / "scaling.pdf").stat().st_size > 0
    ax = scaling.scaling_figure(res).axes[0]
    assert ax.get_ylabel() == "greedy test accuracy"
    # --sampled: the kit's earlier measure, the sampled test record (eval_samples at eval_temperature)
    assert curate.main([*args, "--sampled", "--no-figures"]) == 0
    res = json.loads((out / "scaling.json").read_text())
    assert res["accuracy"] == "sampled"
    for p in res["points"]:
        df = records.read_records(runs.record_path(p["run_dir"], p["step"], "test"))
        assert len(df) == 4 and p["test_accuracy"] == pytest.approx(df["accuracy"].mean())
        assert len(df["outcomes"].iloc[0]) == 1  # eval_samples=1
    assert scaling.accuracy_label(res) == "sampled test accuracy (T 0.8, 1 samples)"
