"""The authors' published per-example results: import-published (file choice, layout, checks) and the
paper's R² reproduced on them. The 7 published GSM8K / Llama3-8B runs come from ../shared when it is
there, else from the committed fixture tests/fixtures/kang2025_gsm8k_7runs.npz (MIT, the authors' arrays)."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import premem
from premem_kit.analysis import analyze as analysis
from premem_kit.analysis import analysis_figures
from premem_kit.core import figures
from premem_kit import metric
from premem_kit.analysis import published
from premem_kit.core import records
from premem_kit.core import runs
from premem_kit.analysis.rundata import load_run

QUIET = dict(progress=False, verbose=False)



@pytest.fixture(scope="session")
def published_runs(tmp_path_factory, published_ckpts):
    root = tmp_path_factory.mktemp("published")
    dirs = published.import_published(published_ckpts, root / "runs", progress=False)
    out = root / "analysis"
    assert premem.main(["analyze", *map(str, dirs), "--out", str(out)]) == 0
    return dict(dirs=dirs, runs=root / "runs", out=out, summary=json.loads((out / "summary.json").read_text()))


def test_import_published_layout(published_runs, published_ckpts):
    dirs = published_runs["dirs"]
    assert len(dirs) == 7
    run = published_runs["runs"] / "gsm8k_orig_3epochs_full_lr2e-05_bs128"
    cfg = runs.read_config_as_written(run)
    assert cfg["task"] == "gsm8k" and cfg["learning_rate"] == 2e-5 and cfg["num_epochs"] == 3
    assert cfg["subset"] == "full" and cfg["batch_size"] == 128 and cfg["model"] == "meta-llama/Meta-Llama-3-8B"
    assert cfg["checkpoints"] == [58, 116, 174] and cfg["n_train_examples"] == 7473
    recs = runs.list_records(run)
    assert [(s, sp) for s, sp, _, _ in recs] == [(58, "test"), (58, "train"), (116, "test"), (116, "train"),
                                                (174, "test"), (174, "train")]
    tr = records.read_records(runs.record_path(run, 116, "train"))
    te = records.read_records(runs.record_path(run, 116, "test"))
    assert len(tr) == 7473 and len(te) == 1319
    assert tr["id"].iloc[7] == "gsm8k/train/7" and te["id"].iloc[3] == "gsm8k/test/3"
    assert tr["epoch"].iloc[0] == 2.0 and tr["step"].iloc[0] == 116
    # this run published 50 train samples and 5 test samples per example (N read from the file name)
    assert len(tr["outcomes"].iloc[0]) == 50 and len(te["outcomes"].iloc[0]) == 5
    assert len(tr["samples"].iloc[0]) == 0
    types = np.load(published_ckpts / run.name / "checkpoint-116/train_answer_types50_seed2_temp0.8.npy")
    np.testing.assert_allclose(tr["accuracy"].to_numpy(), (types == 0).mean(axis=1))
    ppl = np.load(published_ckpts / run.name / "checkpoint-116/train_perplexities.npy")
    np.testing.assert_allclose(tr["perplexity"].to_numpy(), ppl)
    assert tr["target_tokens"].min() > 0 and te["perplexity"].isna().all()
    assert set(tr["outcomes"].iloc[1]) <= set(records.OUTCOMES)


def test_published_default_reads_the_5_sample_files_or_falls_back(capsys, published_ckpts):
    # this copy holds one answer file per checkpoint and split: 5 train samples and 50 test samples, except
    # gsm8k_orig_3epochs_full_lr2e-05_bs128 (50 train, 5 test); the default (5 samples, as the authors)
    # therefore reads the same files as --most-samples, and the numbers pinned below hold for both
    for src in published.published_runs(published_ckpts):
        five, most = published.read_published_run(src), published.read_published_run(src, None)
        n = (50, 5) if src.name == "gsm8k_orig_3epochs_full_lr2e-05_bs128" else (5, 50)
        assert five.files == most.files and {f.name for f in five.files.values()} == {
            f"train_answer_types{n[0]}_seed2_temp0.8.npy", f"test_answer_types{n[1]}_seed2_temp0.8.npy"}
    err = capsys.readouterr().err
    assert ("gsm8k_orig_3epochs_full_lr2e-05_bs128: no train answer file with 5 samples in 3 of 3 checkpoint(s); "
            "using the one with the most samples (train_answer_types50_seed2_temp0.8.npy)") in err
    assert err.count("no test answer file with 5 samples") == 6


def test_import_published_rerun_skips_existing(published_runs, capsys, published_ckpts):
    f = runs.record_path(published_runs["runs"] / "gsm8k_orig_1epochs_full_lr5e-05_bs128", 58, "train")
    before = f.stat().st_mtime_ns
    published.import_published(published_ckpts, published_runs["runs"], progress=False)
    assert f.stat().st_mtime_ns == before
    assert "wrote 0 file(s), kept 44 existing" in capsys.readouterr().out  # 7 x 2 files + 15 ckpts x 2 records


def test_published_r2_and_authors_intermediate_array(published_runs, published_ckpts):
    s = published_runs["summary"]
    # measured with the default (the 5-sample answer files, else the most samples; in this copy the same
    # files as --most-samples, see above): loglog -2.4286 (ppl 1.0922), R^2 0.9653, Pearson r 0.9890,
    # train-acc R^2 -0.977, 15 points
    assert s["r2"] >= 0.95
    assert s["r2"] == pytest.approx(0.9653, abs=5e-4)
    assert s["threshold_loglog"] == pytest.approx(-2.4286, abs=1e-3)
    assert s["pearson_r"] == pytest.approx(0.9890, abs=5e-4) and s["n_points"] == 15
    assert s["train_acc_r2"] == pytest.approx(-0.977, abs=5e-3)
    # the authors saved their PreMemAcc per example for one run (computed at loglog -2.5): reproduce it
    run = load_run(published_runs["runs"] / "gsm8k_orig_3epochs_full_lr2e-05_bs128")
    ref = np.load(published_ckpts / "gsm8k_orig_3epochs_full_lr2e-05_bs128/unmemorized_acc_cummax_all.npy")
    order = np.array([int(i.rsplit("/", 1)[1]) for i in run.ids])
    ours = metric.premem_from_arrays(run.acc, run.ppl, threshold_loglog=-2.5)
    np.testing.assert_allclose(ours, ref[:, order], atol=1e-12)


def test_analyze_writes_documented_outputs(published_runs):
    out, s = published_runs["out"], published_runs["summary"]
    for key in ("threshold_loglog", "threshold_ppl", "r2", "pearson_r", "train_acc_r2", "points", "sweep"):
        assert key in s
    assert s["threshold_ppl"] == pytest.approx(math.exp(math.exp(s["threshold_loglog"])))
    p = s["points"][0]
    for key in ("run", "step", "epoch", "train_acc", "premem_acc", "test_acc", "lr", "num_epochs", "subset"):
        assert key in p
    sweep = pd.read_csv(out / "sweep.csv")
    assert len(sweep) == 50 and sweep["r2"].max() == pytest.approx(s["r2"])
    ex = pd.read_parquet(out / "premem_examples.parquet")
    assert {"run", "id", "premem_acc", "accuracy", "perplexity", "fragile"} <= set(ex.columns)
    assert len(ex) == 7 * 7473 and ex["fragile"].equals(ex["premem_acc"] < 0.75)
    assert len(pd.read_csv(out / "premem_examples.csv")) == len(ex)
    assert [f for f in s["files"] if f.startswith("figures/")] == [
        f"figures/{stem}.{ext}" for stem in ("fig1", "fig3", "fig4", "r2_vs_threshold") for ext in ("png", "pdf")]
    # Figure 1 on the published runs: 7 lines per panel, 3 points for the 3-epoch runs, 1 for the others
    fig = analysis_figures.fig1(pd.DataFrame(s["points"]), s)
    try:
        for ax in fig.axes:
            sizes = {ln.get_label(): len(ln.get_xdata()) for ln in ax.get_lines()[1:]}
            assert len(sizes) == 7 and all(n == (3 if "3epochs" in run else 1) for run, n in sizes.items())
        assert fig.axes[1].get_title().endswith("(R$^2$ = 0.965)")
        assert fig.axes[0].get_title().endswith("(R$^2$ = -0.977)")
    finally:
        figures.pyplot().close(fig)


def test_calibrate_on_reports_heldout_r2(published_runs, tmp_path, capsys):
    out = tmp_path / "held"
    rc = premem.main(["analyze", str(published_runs["runs"] / "*"), "--out", str(out), "--no-figures",
                      "--calibrate-on", "*3epochs*"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert len(s["calibration_runs"]) == 4 and len(s["heldout_runs"]) == 3
    # measured: threshold -2.4286, calibration R^2 0.9570, held-out R^2 0.9696 (Pearson r 0.9968)
    assert s["threshold_loglog"] == pytest.approx(-2.4286, abs=1e-3)
    assert s["r2_calibration"] == pytest.approx(0.9570, abs=5e-4)
    assert s["r2_heldout"] == pytest.approx(0.9696, abs=5e-4)
    assert s["pearson_r_heldout"] == pytest.approx(0.9968, abs=5e-4)
    assert "held-out runs: R^2" in capsys.readouterr().out
    assert "r2_heldout" in pd.read_csv(out / "sweep.csv").columns


def test_given_threshold_forms_agree(published_runs, tmp_path):
    a = analysis.analyze(published_runs["dirs"], tmp_path / "a", threshold_loglog=-2.5, figures=False, **QUIET)
    b = analysis.analyze(published_runs["dirs"], tmp_path / "b", threshold_ppl=math.exp(math.exp(-2.5)),
                         figures=False, **QUIET)
    assert a["threshold_source"] == "given" and a["r2"] == pytest.approx(b["r2"])
    assert a["r2"] < published_runs["summary"]["r2"] + 1e-12


# ----------------------------------------------------------------------------- bad input


def test_parse_published_name():
    assert published.parse_published_name("gsm8k_orig_3epochs_full_lr2e-05_bs128") == dict(
        task="gsm8k", tag="orig", num_epochs=3, subset="full", learning_rate=2e-5, batch_size=128)
    assert published.parse_published_name("math_x_1epochs_lr1e-4_bs8")["subset"] is None
    with pytest.raises(published.PublishedError, match="does not look like"):
        published.parse_published_name("my_run")


def test_import_half_run_no_temp_files_and_unparseable(tmp_path):
    src = tmp_path / "ckpts" / "math_orig_2epochs_half_lr0.0002_bs64"
    rng = np.random.default_rng(0)
    n_train, n_test = 12, 4
    sub = np.array([7, 1, 10, 4, 3, 0])
    src.mkdir(parents=True)
    np.save(src / "subsample_idxs.npy", sub)
    for step in (30, 10, 20, 40):
        ck = src / f"checkpoint-{step}"
        ck.mkdir()
        tr = rng.integers(0, 3, (n_train, 3))
        tr[:, 0] = 2
        np.save(ck / "train_answer_types3_seed2.npy", tr)  # no _temp suffix
        np.save(ck / "test_answer_types20_seed2_temp0.8.npy", rng.integers(0, 3, (n_test, 20)))
        np.save(ck / "train_perplexities.npy", 1 + rng.random(n_train))
    np.save(src.parent / "stray_analysis.npy", np.zeros(3))  # run-level/stray files are ignored
    published.import_published(src.parent, tmp_path / "out", progress=False)
    run = tmp_path / "out" / src.name
    cfg = runs.read_config_as_written(run)
    assert (cfg["task"], cfg["subset"], cfg["num_epochs"], cfg["learning_rate"], cfg["batch_size"]) == (
        "math", "half", 2, 2e-4, 64)
    assert json.loads(runs.subset_ids_path(run).read_text()) == [f"math/train/{i}" for i in sub]
    steps = [s for s, sp, _, _ in runs.list_records(run) if sp == "train"]
    assert steps == [10, 20, 30, 40]
    df = records.read_records(runs.record_path(run, 30, "train"))
    assert df["id"].tolist() == [f"math/train/{i}" for i in sorted(sub)]
    assert df["epoch"].iloc[0] == pytest.approx(1.5)  # 3rd of 4 checkpoints x 2 epochs / 4
    assert (df["target_tokens"] == -1).all()
    tr = np.load(src / "checkpoint-30/train_answer_types3_seed2.npy")
    assert df["outcomes"].iloc[0].tolist() == [records.OUTCOMES[k] for k in tr[0]]
    assert df["outcomes"].iloc[0][0] == "unparseable"
    np.testing.assert_allclose(df["accuracy"], (tr[np.sort(sub)] == 0).mean(axis=1))
    np.testing.assert_allclose(df["perplexity"], np.load(src / "checkpoint-30/train_perplexities.npy")[np.sort(sub)])
    te = records.read_records(runs.record_path(run, 30, "test"))
    assert len(te) == n_test and len(te["outcomes"].iloc[0]) == 20


def test_import_prefers_5_sample_files_and_the_options_choose_others(tmp_path, capsys):
    src = tmp_path / "ckpts" / "gsm8k_orig_1epochs_full_lr1e-05_bs8"
    five = ("5_seed2_temp0.8", "5_seed2", "10_seed2_temp0.8", "50_seed2")
    for step, ns in ((5, five), (10, ("10_seed2", "50_seed2"))):
        (src / f"checkpoint-{step}").mkdir(parents=True)  # step 10 has no 5-sample file
        for name, split in itertools.product(ns, ("train", "test")):
            n = int(name.split("_")[0])
            np.save(src / f"checkpoint-{step}/{split}_answer_types{name}.npy", np.zeros((3, n), dtype=int))
        np.save(src / f"checkpoint-{step}/train_perplexities.npy", np.ones(3) * 1.5)

    def samples_read(out, *opts):
        assert premem.main(["import-published", str(src.parent), str(tmp_path / out), *opts]) == 0
        recs = runs.list_records(tmp_path / out / src.name)
        return [len(records.read_records(p)["outcomes"].iloc[0]) for _, _, _, p in recs]

    assert samples_read("five") == [5, 5, 50, 50]  # (step, split): 5 test, 5 train, 10 test, 10 train
    err = capsys.readouterr().err
    assert (f"{src.name}: no train answer file with 5 samples in 1 of 2 checkpoint(s); using the one with the most "
            "samples (train_answer_types50_seed2.npy)") in err
    f, parts = published.answer_file(src / "checkpoint-5", "train")  # of two 5-sample files, _temp first
    assert f.name == "train_answer_types5_seed2_temp0.8.npy" and parts["fallback"] is False
    assert samples_read("most", "--most-samples") == [50] * 4 and "no train answer" not in capsys.readouterr().err
    assert samples_read("ten", "--samples", "10") == [10] * 4
    with pytest.raises(SystemExit, match="2"):  # refused while parsing
        premem.main(["import-published", str(src.parent), str(tmp_path / "z"), "--samples", "0"])
    assert "argument --samples: expected a whole number >= 1" in capsys.readouterr().err


def test_import_bad_answer_types_names_the_file(tmp_path, capsys):
    src = tmp_path / "ckpts" / "gsm8k_orig_1epochs_full_lr1e-05_bs8"
    ck = src / "checkpoint-5"
    ck.mkdir(parents=True)
    np.save(ck / "train_answer_types2_seed2.npy", np.full((3, 2), 7))
    np.save(ck / "test_answer_types2_seed2.npy", np.zeros((2, 2), dtype=int))
    np.save(ck / "train_perplexities.npy", np.ones(3) * 1.5)
    rc = premem.main(["import-published", str(src.parent), str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "premem.py import-published: error:" in err and "train_answer_types2_seed2.npy" in err
