"""Bad input, as a demanding user gives it: every case ends in a clean error before anything is written
(exit 2, a message naming the file / line / key / option and what is expected) or in a correct result.

One table per script, each row: the arguments, the exit code, a phrase the message must contain. The
commands run in-process (their main()), and each row checks that no file in the sandbox changed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_DATA, tiny_cfg, write_synthetic_run

import evaluate
import premem
import sweep
import train
from premem_kit.core import config
from premem_kit.core.config import DataSettings


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file() and p.name != ".lock"}


def run_main(main, argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, tiny_model):
    """A config file, data folders good and bad, and one trained run of the tiny model."""
    from premem_kit.training.trainer import run_training

    root = tmp_path_factory.mktemp("reliability")
    cfg = tiny_cfg(tiny_model, root / "run", num_epochs=1, max_train_examples=4, eval_train_examples=2,
                   eval_test_examples=2, eval_max_new_tokens=4)
    (root / "cfg.yaml").write_text(config.dump(cfg))
    run_training(cfg)
    bad = root / "bad"
    for name, text in {
        "nonutf8": b"\xff\xfe{}\n", "null_answer": b'{"question": "q", "answer": null}\n',
        "no_hashes": b'{"question": "q", "answer": "2 + 2 = 4"}\n',
    }.items():
        (bad / name).mkdir(parents=True)
        (bad / name / "train.jsonl").write_bytes(text)
        (bad / name / "test.jsonl").write_bytes(text)
    (bad / "dir_train" / "train.jsonl").mkdir(parents=True)
    (bad / "list.yaml").write_text("- a\n- b\n")
    (bad / "invalid.yaml").write_text("key: [unclosed\n")
    foreign = root / "hf_out" / "checkpoint-5"
    foreign.mkdir(parents=True)
    (foreign / "model.safetensors").write_text("x")
    return root


TRAIN_CASES = [  # overrides after cfg.yaml; expected phrase
    (["learning_rat=1e-4"], "did you mean 'learning_rate'"),
    (["num_epochs=0"], "'num_epochs' must be > 0"),
    (["num_epochs=nan"], "'num_epochs' must be a finite number"),
    (["max_train_examples=0"], "'max_train_examples' must be >= 1"),
    (["max_train_examples=-5"], "'max_train_examples' must be >= 1"),
    (["batch_size=0"], "'batch_size' must be >= 1"),
    (["micro_batch_size=0"], "'micro_batch_size' must be >= 1"),
    (["batch_size=6", "micro_batch_size=4"], "batch_size (6) must be a multiple of micro_batch_size (4)"),
    (["learning_rate=-1"], "'learning_rate' must be > 0"),
    (["learning_rate=inf"], "'learning_rate' must be a finite number"),
    (["warmup_ratio=2"], "'warmup_ratio' must be >= 0 and < 1"),
    (["lora_r=-3"], "'lora_r' must be >= 0"),
    (["eval_top_p=5"], "'eval_top_p' must be > 0 and <= 1"),
    (["eval_temperature=-1"], "'eval_temperature' must be >= 0"),
    (["eval_samples=0"], "'eval_samples' must be >= 1"),
    (["data={bad}/nonutf8", "run_dir={root}/fresh"], "not UTF-8"),
    (["data={bad}/null_answer", "run_dir={root}/fresh"], "train.jsonl, line 1: 'answer' must be non-empty text"),
    (["data={bad}/no_hashes", "run_dir={root}/fresh"], "train.jsonl, line 1: the GSM8K answer has no final '#### <number>'"),
    (["data={bad}/dir_train", "run_dir={root}/fresh"], "has a folder named train.jsonl"),
    (["data={bad}/nonutf8/train.jsonl", "run_dir={root}/fresh"], "is a file; 'data' takes a folder"),
    (["run_dir={root}/hf_out"], "not a run folder made by train.py"),
    (["learning_rate=5e-4"], "made with a different config"),  # the trained run, another lr
]


@pytest.mark.parametrize("overrides,phrase", TRAIN_CASES, ids=[c[0][0][:30] for c in TRAIN_CASES])
def test_train_bad_input(sandbox, capsys, overrides, phrase):
    before = snapshot(sandbox)
    argv = [str(sandbox / "cfg.yaml")] + [o.format(bad=sandbox / "bad", root=sandbox) for o in overrides]
    (sandbox / "run" / "train_summary.json").rename(sandbox / "summary.bak")  # so a rerun would train
    try:
        code, err = run_main(train.main, argv, capsys)
    finally:
        (sandbox / "summary.bak").rename(sandbox / "run" / "train_summary.json")
    assert code == 2 and phrase in err, err
    assert snapshot(sandbox) == before


@pytest.mark.parametrize("name,phrase", [("list.yaml", "expected a mapping"), ("invalid.yaml", "not valid YAML"),
                                         ("demo.yml", "does not exist")])
def test_train_bad_config_files(sandbox, capsys, name, phrase):
    code, err = run_main(train.main, [str(sandbox / "bad" / name)], capsys)
    assert code == 2 and phrase in err


def test_train_config_typo_offers_the_right_file(capsys, monkeypatch):
    from conftest import ROOT

    monkeypatch.chdir(ROOT)
    code, err = run_main(train.main, ["configs/demo.yml"], capsys)
    assert code == 2 and "did you mean configs/demo.yaml?" in err
    code, err = run_main(train.main, [], capsys)
    assert code == 2 and "configs/demo.yaml" in err


EVAL_CASES = [
    (["--eval_train_examples", "0"], "key 'eval_train_examples' must be >= 1, got 0"),
    (["eval_train_examples=-1"], "key 'eval_train_examples' must be >= 1, got -1"),
    (["--eval-test-examples", "0"], "key 'eval_test_examples' must be >= 1"),
    (["--eval_samples", "0"], "key 'eval_samples' must be >= 1"),
    (["eval_batch_size=0"], "key 'eval_batch_size' must be >= 1"),
    (["--eval_top_p", "5"], "key 'eval_top_p' must be > 0 and <= 1"),
    (["--eval_temperature", "-1"], "key 'eval_temperature' must be >= 0"),
    (["--eval_samples", "2", "eval_samples=3"], "'eval_samples' is given twice"),
    (["--eval_splits", "dev"], "'eval_splits' takes a non-empty list of train, test"),
    (["--samples", "3"], "--samples is now --eval_samples"),
    (["--train-examples", "3"], "--train-examples is now --eval_train_examples"),
    (["learning_rate=1e-3"], "'learning_rate' is not a setting this command takes"),
    (["--num_epochs", "2"], "'num_epochs' is not a setting of this command (it was fixed when the run was trained)"),
    (["--eval_sample", "2"], "unrecognized option --eval_sample; did you mean 'eval_samples'?"),
    (["--steps", "99"], "--steps 99 is not a complete checkpoint (have: 1)"),
]


@pytest.mark.parametrize("args,phrase", EVAL_CASES, ids=[" ".join(c[0]) for c in EVAL_CASES])
def test_evaluate_bad_input(sandbox, capsys, args, phrase):
    before = snapshot(sandbox)
    code, err = run_main(evaluate.main, [str(sandbox / "run"), *args], capsys)
    assert code == 2 and phrase in err, err
    assert snapshot(sandbox) == before


def test_evaluate_bad_run_folders(sandbox, capsys, tmp_path):
    code, err = run_main(evaluate.main, [str(tmp_path / "typo")], capsys)
    assert code == 2 and "no such run folder" in err
    for text, phrase in (("- a\n", "expected a mapping"), ("x: [\n", "not valid YAML")):
        (tmp_path / "r").mkdir(exist_ok=True)
        (tmp_path / "r" / "config.yaml").write_text(text)
        code, err = run_main(evaluate.main, [str(tmp_path / "r")], capsys)
        assert code == 2 and phrase in err
    # a complete checkpoint without its adapter files: the kit's own message, not peft's
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(sandbox / "run", broken, ignore=shutil.ignore_patterns("records"))
    (broken / "checkpoint-1" / "adapter_config.json").unlink()
    code, err = run_main(evaluate.main, [str(broken)], capsys)
    assert code == 2 and "checkpoint-1: no adapter_config.json" in err


def test_a_locked_run_is_refused_by_train_and_evaluate(sandbox, capsys):
    from premem_kit.core import runs
    from premem_kit.core.files import FileLock

    before = snapshot(sandbox)
    with FileLock(runs.lock_path(sandbox / "run"), "test"):
        code, err = run_main(evaluate.main, [str(sandbox / "run"), "--force"], capsys)
        assert code == 2 and "is in use by pid" in err
        (sandbox / "run" / "train_summary.json").rename(sandbox / "summary.bak")
        try:
            code, err = run_main(train.main, [str(sandbox / "cfg.yaml")], capsys)
        finally:
            (sandbox / "summary.bak").rename(sandbox / "run" / "train_summary.json")
        assert code == 2 and "is in use by pid" in err
    assert snapshot(sandbox) == before


ANALYZE_CASES = [
    (["--threshold", "inf"], "finite"),
    (["--threshold", "nan"], "finite"),
    (["--threshold-ppl", "-1"], "expected a perplexity > 1"),
    (["--threshold-ppl", "1"], "perplexity is never below 1"),  # crashed after writing, summary not reusable
    (["--fragile-t", "2"], "[0, 1]"),
    (["--sweep-points", "0"], "grid"),
    (["--fig3-run", "nosuch"], "--fig3-run 'nosuch' is not among the analyzed runs"),  # failed after writing
    (["--bootstrap", "-1"], "argument --bootstrap: expected a whole number >= 0"),
]


@pytest.mark.parametrize("args,phrase", ANALYZE_CASES, ids=[" ".join(c[0]) for c in ANALYZE_CASES])
def test_analyze_bad_input_writes_nothing(tmp_path, capsys, args, phrase):
    import numpy as np

    run = write_synthetic_run(tmp_path / "r", [10, 20], np.full((2, 3), 0.5), np.full((2, 3), 2.0), [0.4, 0.5])
    out = tmp_path / "out"
    code, err = run_main(premem.main, ["analyze", str(run), "--out", str(out), *args], capsys)
    assert code == 2 and phrase in err, err
    assert not out.exists()


FETCH_CASES = [  # fetch-published, refused while parsing (the network cases: tests/test_download.py)
    (["--samples", "0"], "argument --samples: expected a whole number >= 1, got 0"),
    (["--samples", "-3"], "argument --samples: expected a whole number >= 1, got -3"),
    (["--timeout", "0"], "argument --timeout: expected a number > 0"),
    (["--timeout", "-1"], "argument --timeout: expected a number > 0"),
    (["--timeout", "nan"], "argument --timeout: expected a finite number"),
    (["--base-url", "ftp://bob:pw-SECRET@host/"], "base URL 'ftp://***@host/': expected http://HOST/"),
    (["--base-url", "bob:pw-SECRET@host/"], "base URL '***@host/': expected http://HOST/"),
    (["--base-url", "http://bob:pw-SECRET@host:port/"], "cannot be read (the host or its port)"),
    (["--base-url", "https://host/x?token=pw-SECRET#top"], "https://host/x?token=***: a #fragment is never sent"),
    (["--base-url", "file:///tmp/ckpts"], "expected http://HOST/... or https://HOST/..."),
]


@pytest.mark.parametrize("args,phrase", FETCH_CASES, ids=[" ".join(c[0]) for c in FETCH_CASES])
def test_fetch_published_bad_input_writes_nothing(tmp_path, capsys, args, phrase):
    out = tmp_path / "out"
    code, err = run_main(premem.main, ["fetch-published", str(out), *args], capsys)
    assert code == 2 and phrase in err and "pw-SECRET" not in err, err
    assert not out.exists()


def test_analysis_outputs_and_inputs_of_the_wrong_kind_are_refused(tmp_path, capsys):
    """--out naming a file, --threshold-from naming a folder or a binary file, --examples -1, and
    import-published --samples 0: exit 2 naming the option, nothing written."""
    import numpy as np

    run = write_synthetic_run(tmp_path / "r", [10, 20], np.full((2, 3), 0.5), np.full((2, 3), 2.0), [0.4, 0.5])
    (tmp_path / "afile").write_text("x")
    (tmp_path / "binary.json").write_bytes(bytes(range(256)))
    before = snapshot(tmp_path)
    cases = [
        (["analyze", str(run), "--out", str(tmp_path / "afile")], "argument --out: "),
        (["robustness", str(run), "--out", str(tmp_path / "o"), "--threshold-from", str(tmp_path)],
         "argument --threshold-from: "),
        (["robustness", str(run), "--out", str(tmp_path / "o"), "--threshold-from", str(tmp_path / "binary.json")],
         "not a text file"),
        (["robustness", str(run), "--out", str(tmp_path / "o"), "--examples", "-1"],
         "argument --examples: expected a whole number >= 0"),
        (["import-published", str(tmp_path), str(tmp_path / "o"), "--samples", "0"],
         "argument --samples: expected a whole number >= 1"),
    ]
    for argv, phrase in cases:
        code, err = run_main(premem.main, argv, capsys)
        assert code == 2 and phrase in err, (argv, err)
        assert snapshot(tmp_path) == before, argv


def test_analyze_warns_on_mixed_settings_and_holes(tmp_path, capsys):
    """Runs whose records were made with different sampler settings, or with a checkpoint lacking its test
    record, are analyzed with a warning that names them."""
    import numpy as np

    from premem_kit.core import records, runs

    a = write_synthetic_run(tmp_path / "a", [10, 20], np.full((2, 3), 0.5), np.full((2, 3), 2.0), [0.4, 0.5])
    b = write_synthetic_run(tmp_path / "b", [10, 20], np.full((2, 3), 0.6), np.full((2, 3), 2.0), [None, 0.6])
    from conftest import record_rows

    for run, samples in ((a, 4), (b, 2)):
        for step in (10, 20):
            rows = record_rows([f"gsm8k/train/{i}" for i in range(3)], step, "train", [0.5] * 3, [2.0] * 3)
            records.write_records(runs.record_path(run, step, "train"), rows, {"eval_samples": samples})
    code, err = run_main(premem.main, ["analyze", str(a), str(b), "--out", str(tmp_path / "o"), "--no-figures"],
                         capsys)
    assert code == 0
    assert "train records were made with different settings" in err and "eval_samples=4" in err, err
    assert "checkpoints without a test record" in err and "b (steps 10)" in err, err


def test_mixed_caps_tells_a_grid_cap_from_different_settings():
    """A run smaller than the grid's cap on train questions is evaluated on all of them: that count differs
    by design. Two runs that each evaluated part of their train set, at different counts, do not agree."""
    from premem_kit.analysis.analyze import mixed_caps

    assert not mixed_caps([("full", 64, False), ("half", 64, True), ("quarter", 32, True)])
    assert not mixed_caps([("a", 32, True), ("b", 8, True)])  # no cap reached anywhere
    assert mixed_caps([("a", 64, False), ("b", 32, False)])
    assert mixed_caps([("a", 32, False), ("b", 64, True)])  # b's 64 questions exceed a's cap of 32


def test_analyze_warns_on_different_question_counts_only_beyond_a_cap(tmp_path, capsys):
    import numpy as np

    from premem_kit.core import files, records, runs
    from conftest import record_rows

    def run(name, n_eval, n_train):
        ids = [f"gsm8k/train/{i}" for i in range(n_train)]
        r = write_synthetic_run(tmp_path / name, [10], np.full((1, n_eval), 0.5), np.full((1, n_eval), 2.0), [0.4],
                                ids=ids[:n_eval])
        files.atomic_write_json(runs.subset_ids_path(r), ids)
        rows = record_rows(ids[:n_eval], 10, "train", [0.5] * n_eval, [2.0] * n_eval)
        records.write_records(runs.record_path(r, 10, "train"), rows, {"eval_samples": 4, "examples": n_eval})
        return str(r)

    full, quarter = run("full", 4, 8), run("quarter", 2, 2)  # cap 4: all of quarter's 2
    args = ["--no-figures", "--threshold", "-2.3"]
    code, err = run_main(premem.main, ["analyze", full, quarter, "--out", str(tmp_path / "o"), *args], capsys)
    assert code == 0 and "different numbers" not in err and "different settings" not in err, err
    other = run("other", 3, 8)  # evaluated with a cap of 3
    code, err = run_main(premem.main, ["analyze", full, quarter, other, "--out", str(tmp_path / "o2"), *args], capsys)
    assert code == 0 and "different numbers of their train questions: full 4, quarter 2 (all), other 3" in err, err


def test_a_record_column_of_the_wrong_type_is_named(tmp_path, capsys):
    import numpy as np
    import pandas as pd

    from premem_kit.core import runs

    run = write_synthetic_run(tmp_path / "r", [10, 20], np.full((2, 3), 0.5), np.full((2, 3), 2.0), [0.4, 0.5])
    p = runs.record_path(run, 20, "train")
    df = pd.read_parquet(p)
    df["accuracy"] = ["high"] * len(df)  # text where numbers belong
    df.to_parquet(p)
    code, err = run_main(premem.main, ["analyze", str(run), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "column accuracy holds large_string, expected numbers" in err and str(p) in err, err
    assert not (tmp_path / "o").exists()


def test_analyze_without_records_says_what_to_run(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    code, err = run_main(premem.main, ["analyze", str(tmp_path / "r"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and f"python evaluate.py {tmp_path / 'r'}" in err


def test_perplexity_overflow_is_infinite_not_a_crash():
    import math

    from premem_kit.models.inference import ppl_from_nll

    assert ppl_from_nll(710.0) == math.inf and ppl_from_nll(5000.0) == math.inf
    assert ppl_from_nll(1.0) == pytest.approx(math.e) and math.isnan(ppl_from_nll(math.nan))


def test_appended_train_file_ids_must_not_collide(tmp_path, tiny_model):
    from premem_kit.tasks import data

    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "gsm8k/train/3", "question": "q?", "answer": "1 + 1 = 2\n#### 2"}) + "\n")
    cfg = tiny_cfg(tiny_model, tmp_path / "r", train_file=str(extra), train_file_mode="append")
    with pytest.raises(data.DataError, match=r"id 'gsm8k/train/3' .* is also an id of the gsm8k train split"):
        data.train_examples(cfg)


def test_math_solution_without_a_boxed_answer_is_an_error(tmp_path):
    from premem_kit.tasks import data

    (tmp_path / "train.jsonl").write_text(json.dumps({"problem": "p", "solution": "x = 2"}) + "\n")
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(data.DataError, match=r"train\.jsonl, line 1: the MATH solution has no \\boxed"):
        data.load_split(DataSettings(task="math", data=str(tmp_path)), "train")


def test_grid_cell_names_cannot_leave_the_runs_root(tmp_path, capsys):
    from conftest import ROOT

    g = tmp_path / "g.yaml"
    g.write_text(f"base: {ROOT / 'configs' / 'demo.yaml'}\nruns_root: {tmp_path / 'runs'}\n"
                 "cells:\n  - {name: ../../x, num_epochs: 1}\n")
    code, err = run_main(sweep.main, ["run", str(g)], capsys)
    assert code == 2 and "g.yaml line 4 (cell 1)" in err and "../../x" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()


def test_environment_has_no_hub_access_needed():
    assert os.environ.get("HF_HUB_OFFLINE") == "1" and DEMO_DATA.is_dir()


# ----------------------------------------------------------------------------- the rephrase client's secrets

class Server:
    """A local HTTP server answering each POST with the next canned (status, headers, body)."""

    def __init__(self, replies):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.replies, self.seen = list(replies), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                outer.seen.append((self.command, self.path, dict(self.headers), body))
                status, headers, text = outer.replies.pop(0) if outer.replies else (500, {}, "none left")
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                data = text.encode()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET = _answer

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


KEY = "sk-secret-123"
OK = (200, {"Content-Type": "application/json"}, json.dumps({"choices": [{"message": {"content": "hi"}}]}))


def client(url, **kw):
    from premem_kit.curation.chat import OpenAIChat

    return OpenAIChat(base_url=url, model="m", api_key=KEY, rpm=0, backoff=0.01, **kw)


def test_a_redirect_is_refused_and_the_key_goes_nowhere_else():
    from premem_kit.curation.vocabulary import CurationError

    other = Server([OK])
    first = Server([(307, {"Location": other.url + "/v1/chat/completions"}, "")])
    try:
        with pytest.raises(CurationError, match="does not follow redirects"):
            client(first.url)([{"role": "user", "content": "x"}])
        assert len(first.seen) == 1 and first.seen[0][2].get("Authorization") == f"Bearer {KEY}"
        assert other.seen == []  # the redirect target never saw a request, let alone the key
    finally:
        first.close()
        other.close()


def test_retry_after_is_capped_and_the_deadline_holds(monkeypatch):
    from premem_kit.curation import chat
    from premem_kit.curation.vocabulary import CurationError

    slept = []
    monkeypatch.setattr(chat.time, "sleep", lambda s: slept.append(s))
    srv = Server([(429, {"Retry-After": "86400"}, "slow down"), OK])
    try:
        assert client(srv.url)([{"role": "user", "content": "x"}]) == "hi"
        assert slept == [chat.MAX_RETRY_AFTER]  # not a day
    finally:
        srv.close()
    srv = Server([(503, {"Retry-After": "50"}, "busy")] * 5)
    try:
        with pytest.raises(CurationError, match="within the 30 s deadline"):
            client(srv.url, deadline=30)([{"role": "user", "content": "x"}])
        assert len(srv.seen) == 1  # the second wait would pass the deadline: no retry
    finally:
        srv.close()


def test_errors_and_repr_never_show_the_key():
    from premem_kit.curation.chat import OpenAIChat
    from premem_kit.curation.vocabulary import CurationError

    srv = Server([(401, {}, f"bad key: Authorization: Bearer {KEY}")])
    try:
        c = client(srv.url)
        with pytest.raises(CurationError) as e:
            c([{"role": "user", "content": "x"}])
        assert KEY not in str(e.value) and "***" in str(e.value) and "HTTP 401" in str(e.value)
        assert KEY not in repr(c) and KEY not in str(vars(c).get("api_key", ""))
    finally:
        srv.close()
    with pytest.raises(CurationError, match="max_retries must be >= 0"):
        OpenAIChat(base_url="http://127.0.0.1:9", model="m", max_retries=-1)


CURATE_CASES = [  # (argv with {run}/{sel}/{bad}, phrase)
    ("select {run} --strategy premem --out {out} --t nan", "argument --t: expected a finite number"),
    ("select {run} --strategy premem --out {out} --t 2", "argument --t: expected a number in [0, 1]"),
    ("select {run} --strategy premem --out {out} --mem-threshold nan", "argument --mem-threshold: expected a finite"),
    ("select {run} --strategy iid --out {out} --t 0.5", "--t applies to --strategy premem only"),  # was ignored
    ("select {run} --strategy iid --out {out} --mem-threshold -2", "--mem-threshold applies to --strategy premem"),
    ("select {run} --strategy premem --out {out} --fraction 0.5", "--fraction applies to --strategy ifd or"),
    ("algo1 {cfg} --out {out} --rounds -1 --n-new 4 --pool holdout", "argument --rounds: expected a whole number >= 1"),
    ("collect --selection {sel} --out {out} --n -3 --pool holdout", "argument --n: expected a whole number >= 1"),
    ("collect --selection {bad} --out {out} --n 3 --pool holdout", "not valid JSON"),
    ("collect --selection {sel} --out {out} --n 3 --collector rephrase --rephrase-model m --max-retries -1",
     "max_retries must be >= 0"),
]


@pytest.mark.parametrize("args,phrase", CURATE_CASES, ids=[c[0].split(" --out")[0][:40] for c in CURATE_CASES])
def test_curate_bad_input(tmp_path, capsys, args, phrase):
    import numpy as np
    from conftest import ROOT

    import curate

    run = write_synthetic_run(tmp_path / "run", [10, 20], np.full((2, 4), 0.5), np.full((2, 4), 3.0), [0.4, 0.5],
                              config={"data": str(DEMO_DATA)})
    sel = tmp_path / "sel.json"
    assert curate.main(["select", str(run), "--strategy", "iid", "--out", str(sel)]) == 0
    (tmp_path / "bad.json").write_text('{"x": 1')
    capsys.readouterr()
    before = snapshot(tmp_path)
    argv = args.format(run=run, sel=sel, bad=tmp_path / "bad.json", out=tmp_path / "out",
                       cfg=ROOT / "configs" / "curate_demo.yaml").split()
    code, err = run_main(curate.main, argv, capsys)
    assert code == 2 and phrase in err, err
    assert snapshot(tmp_path) == before


def test_import_published_refuses_impossible_perplexities(tmp_path, capsys):
    import numpy as np

    ck = tmp_path / "src" / "gsm8k_orig_1epochs_full_lr5e-05_bs128" / "checkpoint-5"
    ck.mkdir(parents=True)
    np.save(ck / "train_answer_types5_seed2.npy", np.zeros((4, 5), dtype=np.int64))
    np.save(ck / "test_answer_types5_seed2.npy", np.zeros((3, 5), dtype=np.int64))
    for bad in (-1.0, np.inf):
        np.save(ck / "train_perplexities.npy", np.array([1.5, bad, 2.0, 1.1]))
        code, err = run_main(premem.main, ["import-published", str(tmp_path / "src"), str(tmp_path / "out")], capsys)
        assert code == 2 and "1 perplexities are not finite numbers >= 1 (row 1" in err, err
        assert not (tmp_path / "out").exists()
