"""evaluate.py and inference.py: perplexity against a hand computation, padding invariance, seeded
sampling, stop strings, the record schema, skip/resume, and 2-process sharding."""
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from conftest import ROOT, tiny_cfg
from premem_kit.tasks import data
from premem_kit.models import inference
from premem_kit.core import records
from premem_kit.core import runs
from premem_kit.training import trainer as training
from premem_kit.core.errors import KitError
from premem_kit.evaluation.evaluation import EvalOptions, evaluate_run
from premem_kit.core.config import DataSettings


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    return tok, model


@pytest.fixture(scope="module")
def exs():
    from conftest import DEMO_DATA

    return data.load_split(DataSettings(data=str(DEMO_DATA)), "train")[:7]


def test_perplexity_equals_hand_computation(tiny, exs):
    tok, model = tiny
    e = exs[0]
    p_ids = tok(e["prompt"])["input_ids"]
    t_ids = tok(e["target"], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + t_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    nll = 0.0
    for k, tid in enumerate(t_ids):
        pos = len(p_ids) + k - 1  # the logits at pos predict token pos + 1
        nll -= torch.log_softmax(logits[pos], -1)[tid].item()
    expected = math.exp(nll / len(t_ids))
    ppl, n = inference.perplexities(model, tok, [e["prompt"]], [e["target"]], progress=False)
    assert n == [len(t_ids)]
    assert ppl[0] == pytest.approx(expected, rel=1e-5)


def test_batched_perplexity_does_not_depend_on_padding(tiny, exs):
    tok, model = tiny
    P, T = [e["prompt"] for e in exs], [e["target"] for e in exs]
    single, n1 = inference.perplexities(model, tok, P, T, batch_size=1, progress=False)
    for bs in (2, 3, 7):
        batched, n2 = inference.perplexities(model, tok, P, T, batch_size=bs, progress=False)
        assert n1 == n2
        for a, b in zip(single, batched):
            assert abs(a - b) / a < 1e-4


def test_same_seed_same_samples(tiny, exs):
    tok, model = tiny
    P = [e["prompt"] for e in exs[:3]]
    a, _ = inference.sample(model, tok, P, n=3, max_new_tokens=12, batch_size=2, seed=5, progress=False)
    b, _ = inference.sample(model, tok, P, n=3, max_new_tokens=12, batch_size=2, seed=5, progress=False)
    c, _ = inference.sample(model, tok, P, n=3, max_new_tokens=12, batch_size=2, seed=6, progress=False)
    assert a == b
    assert a != c
    assert all(len(x) == 3 for x in a)


def test_stop_string_cut():
    assert inference.cut(" 2 + 2 = 4\n#### 4\nDone. junk\nDone.") == " 2 + 2 = 4\n#### 4"
    assert inference.cut("no stop here") == "no stop here"


def test_memorized_example_is_generated_and_stops_at_done(tmp_path, tiny_model, exs):
    """Train the tiny model on one example until it has memorized it: greedy decoding then reproduces
    the solution and generation stops at '\\nDone.' long before max_new_tokens."""
    from premem_kit.models import loading as models

    cfg = tiny_cfg(tiny_model, tmp_path / "mem", max_train_examples=1, batch_size=1, micro_batch_size=1,
                   num_epochs=150, learning_rate=3e-3, warmup_steps=0, lora_r=0,  # full finetuning
                   lr_scheduler="constant")
    tok, model = models.load_for_training(cfg)
    from conftest import DEMO_DATA

    ex = min(data.load_split(DataSettings(data=str(DEMO_DATA)), "train"), key=lambda e: len(e["solution"]))
    trainer = training.build_trainer(cfg, tmp_path / "mem", [ex], tok, model)
    trainer.args.save_strategy = "no"
    trainer.train()
    model.eval()
    ppl, _ = inference.perplexities(model, tok, [ex["prompt"]], [ex["target"]], progress=False)
    assert ppl[0] < 1.05
    outs, ntok = inference.sample(model, tok, [ex["prompt"]], n=1, greedy=True, max_new_tokens=300,
                                  progress=False)
    assert outs[0][0] == " " + ex["solution"]
    assert ntok < 300


def test_records_round_trip_with_schema(tmp_path):
    rows = [{"id": f"gsm8k/train/{i}", "step": 8, "epoch": 1.0, "split": "train", "variant": "original",
             "samples": [" a\n#### 1", " b"], "answers": ["1", None], "outcomes": ["correct", "unparseable"],
             "accuracy": 0.5, "perplexity": 1.25, "target_tokens": 40} for i in range(3)]
    p = runs.record_path(tmp_path, 8, "train")
    assert p.name == "step-000008.train.original.parquet"
    records.write_records(p, rows)
    df = records.read_records(p)
    assert list(df.columns) == list(records.RECORD_COLUMNS) + list(records.OPTIONAL_COLUMNS)
    assert not df["target_cut"].any()
    assert df["samples"].iloc[0].tolist() == [" a\n#### 1", " b"]
    assert df["answers"].iloc[0].tolist() == ["1", None]
    assert df["step"].dtype == "int64" and df["perplexity"].dtype == "float64"
    assert runs.list_records(tmp_path) == [(8, "train", "original", p)]
    bad = [dict(rows[0], outcomes=["right", "wrong"])]
    with pytest.raises(ValueError, match="outcome 'right' is not one of"):
        records.write_records(runs.record_path(tmp_path, 9, "train"), bad)
    assert not runs.record_path(tmp_path, 9, "train").exists()
    assert not list(tmp_path.glob("records/.*tmp"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model):
    run = tmp_path_factory.mktemp("evalrun") / "run"
    cfg = tiny_cfg(tiny_model, run, num_epochs=2)
    training.run_training(cfg)
    return run


def test_evaluate_writes_every_checkpoint_then_skips_and_resumes(trained_run):
    run = trained_run
    opts = EvalOptions(settings={"eval_variants": ["original", "first"], "eval_base_model": True}, progress=False)
    summary = evaluate_run(run, opts)
    files = runs.list_records(run)
    assert {(s, sp, v) for s, sp, v, _ in files} == {
        (s, sp, v) for s in (0, 4, 8) for sp in ("train", "test") for v in ("original", "first")}
    df = records.read_records(runs.record_path(run, 8, "train"))
    assert len(df) == 8 and (df["step"] == 8).all() and (df["epoch"] == 2.0).all()
    assert df["samples"].map(len).eq(2).all()
    assert df["perplexity"].gt(1).all() and df["target_tokens"].gt(0).all()
    assert (df["accuracy"] == df["outcomes"].map(lambda o: sum(x == "correct" for x in o) / 2)).all()
    ids = set(df["id"])
    assert ids <= set(__import__("json").loads((run / "subset_ids.json").read_text()))
    assert set(records.read_records(runs.record_path(run, 4, "train"))["id"]) == ids  # same every ckpt
    test = records.read_records(runs.record_path(run, 8, "test"))
    assert test["id"].tolist() == [f"gsm8k/test/{i}" for i in range(6)] and test["perplexity"].isna().all()
    first = records.read_records(runs.record_path(run, 8, "train", "first"))
    assert first["perplexity"].isna().all()
    assert len(summary) == 12

    # a rerun skips what exists; a deleted file is redone, alone
    mtimes = {p: p.stat().st_mtime_ns for *_, p in files}
    gone = runs.record_path(run, 4, "test")
    gone.unlink()
    evaluate_run(run, opts)
    assert gone.exists()
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items() if p != gone)
    evaluate_run(run, EvalOptions(settings={"eval_variants": ["original", "first"]}, force=True, steps=[8], progress=False))
    changed = [p for p, m in mtimes.items() if p.exists() and p.stat().st_mtime_ns != m and p != gone]
    assert sorted(p.name for p in changed) == sorted(
        f"step-000008.{s}.{v}.parquet" for s in ("train", "test") for v in ("original", "first"))


def test_greedy_pass_writes_likelihoods(trained_run):
    evaluate_run(trained_run, EvalOptions(greedy=True, steps=[8], settings={"eval_splits": ["train"]}, progress=False))
    g = pd.read_parquet(runs.greedy_path(trained_run, 8, "train"))
    assert len(g) == 8 and g["likelihood"].between(0, 1).all() and g["tokens"].gt(0).all()
    assert set(g["outcome"]) <= set(records.OUTCOMES)


def test_two_processes_give_the_same_records(trained_run, tmp_path):
    import shutil

    two = tmp_path / "two"
    shutil.copytree(trained_run, two, ignore=shutil.ignore_patterns("records"))
    # --multi_gpu, not --cpu: `--cpu` starts a single process; on a machine without a GPU, --multi_gpu starts
    # 2 CPU processes (torchrun) that parallel.dist_state() joins with gloo
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(ROOT / "evaluate.py"), str(two), "--steps", "8"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for split in ("train", "test"):
        a = records.read_records(runs.record_path(trained_run, 8, split))
        b = records.read_records(runs.record_path(two, 8, split))
        assert a["id"].tolist() == b["id"].tolist()
        assert a["target_tokens"].tolist() == b["target_tokens"].tolist()
        pd.testing.assert_series_equal(a["perplexity"], b["perplexity"], rtol=1e-5)
        assert b["samples"].map(len).eq(2).all()


def test_a_torn_record_is_redone_and_bad_options_write_nothing(trained_run, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    evaluate_run(run, EvalOptions(steps=[4], settings={"eval_splits": ["test"]}, progress=False))
    p = runs.record_path(run, 4, "test")
    good = records.read_records(p)
    p.write_bytes(p.read_bytes()[:100])  # a record cut short (disk full, copied half)
    evaluate_run(run, EvalOptions(steps=[4], settings={"eval_splits": ["test"]}, progress=False))
    pd.testing.assert_frame_equal(records.read_records(p), good)  # redone, same seed: same record
    before = sorted(x.name for x in (run / "records").iterdir())
    for bad, phrase in ((EvalOptions(settings={"eval_train_examples": 0}), "'eval_train_examples' must be >= 1"),
                        (EvalOptions(settings={"eval_samples": 0}), "'eval_samples' must be >= 1"),
                        (EvalOptions(settings={"eval_batch_size": 0}), "'eval_batch_size' must be >= 1"),
                        (EvalOptions(settings={"eval_top_p": 5.0}), "'eval_top_p' must be > 0 and <= 1"),
                        (EvalOptions(settings={"learning_rate": 1.0}), "'learning_rate' was fixed when"),
                        (EvalOptions(steps=[99]), "--steps 99 is not a complete checkpoint")):
        with pytest.raises(KitError, match=phrase):
            evaluate_run(run, bad)
    assert sorted(x.name for x in (run / "records").iterdir()) == before


def test_a_long_prompt_flags_its_cut_target(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from premem_kit.evaluation.evaluation import Sampling, score_examples
    from premem_kit.models import loading as models

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = models.load_base_model(tiny_cfg(tiny_model, tmp_path / "r"))
    exs = data.load_split(DataSettings(data=str(data_dir())), "train")[:2]
    n_prompt = len(tok(exs[0]["prompt"])["input_ids"])
    how = Sampling(task="gsm8k", samples=1, temperature=0.8, top_p=0.95, max_new_tokens=4, batch_size=2, seed=0,
                   max_length=n_prompt + 3)
    scored = score_examples(model, tok, exs, [e["prompt"] for e in exs], how, perplexity=True, progress=False)
    assert scored[0].target_cut and scored[0].target_tokens == 3


def data_dir():
    from conftest import DEMO_DATA

    return DEMO_DATA


def test_records_load_in_one_line_after_a_greedy_pass(trained_run):
    """Greedy records sit in RUN/greedy, so the sampled records read with pandas alone, and records.load
    gives the same rows; records.load(greedy=True) the greedy ones."""
    evaluate_run(trained_run, EvalOptions(greedy=True, steps=[8], settings={"eval_splits": ["train"]}, progress=False))
    assert runs.greedy_path(trained_run, 8, "train").parent == trained_run / "greedy"
    df = pd.read_parquet(trained_run / "records")
    assert set(df.columns) >= set(records.RECORD_COLUMNS) and "likelihood" not in df.columns
    loaded = records.load(trained_run)
    key = ["step", "split", "variant", "id"]
    assert loaded[key].values.tolist() == df.sort_values(key)[key].values.tolist()
    g = records.load(trained_run, greedy=True)
    assert list(g.columns) == list(records.GREEDY_COLUMNS) and set(g.step) == {8} and set(g.split) == {"train"}
