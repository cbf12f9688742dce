"""Tests for premem.py: the metric, calibration, import-published, analyze outputs and bad input."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import premem  # noqa: E402
import records  # noqa: E402

PUBLISHED = Path(__file__).resolve().parents[1].parent / "shared/data/kang2025/ckpts"
needs_published = pytest.mark.skipif(
    not PUBLISHED.is_dir(), reason=f"published Kang et al. results not found at {PUBLISHED}"
)

T = -2.0  # loglog threshold used by the hand-made sequences
P = math.exp(math.exp(T))  # = 1.1447 perplexity
LOW, HIGH = 1.05, 2.0  # memorized / not memorized at T


def pm(acc, ppl):
    """PreMemAcc of one example over checkpoints."""
    return premem.premem_from_arrays(np.array(acc)[:, None], np.array(ppl)[:, None], threshold_ppl=P)[:, 0]


# ----------------------------------------------------------------------------- the metric


def test_memorized_from_the_start_scores_zero():
    np.testing.assert_allclose(pm([0.9, 1.0, 1.0], [LOW, LOW, LOW]), [0, 0, 0])


def test_never_memorized_equals_accuracy():
    acc = [0.2, 0.6, 0.8]
    np.testing.assert_allclose(pm(acc, [HIGH, HIGH, HIGH]), acc)


def test_accuracy_falling_after_its_peak_is_capped_by_current_accuracy():
    np.testing.assert_allclose(pm([0.2, 0.8, 0.4], [HIGH, HIGH, HIGH]), [0.2, 0.8, 0.4])
    # memorized at the end: keeps the best unmemorized accuracy, capped by the current one
    np.testing.assert_allclose(pm([0.2, 0.8, 1.0], [HIGH, HIGH, LOW]), [0.2, 0.8, 0.8])
    np.testing.assert_allclose(pm([0.2, 0.8, 0.5], [HIGH, HIGH, LOW]), [0.2, 0.8, 0.5])


def test_memorized_then_unmemorized():
    # masked = [0, 0.5, 0] -> running max [0, 0.5, 0.5] -> min with acc
    np.testing.assert_allclose(pm([0.9, 0.5, 1.0], [LOW, HIGH, LOW]), [0.0, 0.5, 0.5])


def test_ppl_at_most_one_is_always_memorized_and_nan_counts_as_memorized():
    assert np.isneginf(premem.loglog([1.0, 0.999])).all()
    for t in (-50.0, -5.0, 0.0, 3.0):
        out = premem.premem_from_arrays([[1.0, 1.0, 1.0]], [[1.0, 0.999, np.nan]], threshold_loglog=t)
        np.testing.assert_allclose(out, [[0.0, 0.0, 0.0]])


def test_threshold_forms_agree_and_boundary_is_strict():
    rng = np.random.default_rng(1)
    acc = rng.random((5, 400))
    ppl = 1 + rng.exponential(0.3, (5, 400))
    for t in (-3.0, -2.4, -1.0):
        a = premem.premem_from_arrays(acc, ppl, threshold_loglog=t)
        b = premem.premem_from_arrays(acc, ppl, premem.ppl_from_loglog(t))
        np.testing.assert_array_equal(a, b)
    assert premem.ppl_from_loglog(-2.5) == pytest.approx(1.0855, abs=1e-4)
    assert premem.loglog_from_ppl(premem.ppl_from_loglog(-2.5)) == pytest.approx(-2.5)
    # ppl exactly at the threshold is not memorized (memorized <=> ppl < p)
    assert premem.premem_from_arrays([[0.7]], [[2.0]], 2.0)[0, 0] == 0.7
    with pytest.raises(ValueError):
        premem.premem_from_arrays([[0.7]], [[2.0]])


def test_predicted_test_accuracy_and_sweep_match_the_definition():
    rng = np.random.default_rng(2)
    acc = rng.random((4, 300))
    ppl = 1 + rng.exponential(0.5, (4, 300))
    grid = np.linspace(-4, 0, 9)
    sw = premem.premem_sweep(acc, premem.loglog(ppl), grid, max_elems=3000)  # forces chunking
    for k, t in enumerate(grid):
        ref = premem.predicted_test_accuracy(acc, ppl, threshold_loglog=t)
        # explicit double loop over checkpoints, straight from the paper's formula
        mem = np.log(np.log(ppl)) < t
        slow = np.array([[min(max(acc[j, i] * (not mem[j, i]) for j in range(m + 1)), acc[m, i])
                          for i in range(acc.shape[1])] for m in range(acc.shape[0])]).mean(axis=1)
        np.testing.assert_allclose(ref, slow)
        np.testing.assert_allclose(sw[k], slow)


def test_r2_identity_and_pearson():
    y = np.array([0.1, 0.2, 0.3, 0.4])
    assert premem.r2_identity(y, y) == 1.0
    assert premem.r2_identity(y, np.full(4, y.mean())) == pytest.approx(0.0)
    assert premem.r2_identity(y, y + 0.1) == pytest.approx(1 - 4 * 0.01 / 0.05)
    assert premem.pearson_r(y, 2 * y + 1) == pytest.approx(1.0)
    assert math.isnan(premem.r2_identity([0.3], [0.3]))
    np.testing.assert_allclose(premem.r2_identity(y, np.stack([y, y + 0.1])), [1.0, 0.2])


# ----------------------------------------------------------------------------- synthetic run folders


def write_run(run_dir, steps, acc, ppl, test_acc, *, epochs=None, lr=1e-5, num_epochs=3, ids=None):
    """A run folder made with records.write_records: acc/ppl [ckpt, ex], test_acc [ckpt]."""
    run_dir = Path(run_dir)
    n = acc.shape[1]
    ids = ids or [f"toy/train/{i}" for i in range(n)]
    cfg = dict(task="gsm8k", model="toy", learning_rate=lr, num_epochs=num_epochs, subset="full",
               batch_size=8, run_name=run_dir.name)
    records.atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg))
    for k, s in enumerate(steps):
        ep = float(epochs[k]) if epochs is not None else float(s) / 100
        rows = [dict(id=ids[i], step=s, epoch=ep, split="train", variant="original", samples=[], answers=[],
                     outcomes=["correct"], accuracy=float(acc[k, i]), perplexity=float(ppl[k, i]),
                     target_tokens=10) for i in range(n)]
        records.write_records(records.record_path(run_dir, s, "train"), rows)
        if test_acc[k] is not None:
            rows = [dict(id=f"toy/test/{i}", step=s, epoch=ep, split="test", variant="original", samples=[],
                         answers=[], outcomes=["correct"], accuracy=float(test_acc[k]), perplexity=float("nan"),
                         target_tokens=-1) for i in range(3)]
            records.write_records(records.record_path(run_dir, s, "test"), rows)
    return run_dir


def test_step0_counts_as_a_checkpoint(tmp_path):
    # example 0 is solved (unmemorized) by the base model, then memorized: PreMemAcc keeps 1.0
    acc = np.array([[1.0, 0.0], [1.0, 0.5], [1.0, 0.5]])
    ppl = np.array([[3.0, 3.0], [LOW, 3.0], [LOW, LOW]])
    run = write_run(tmp_path / "r", [0, 100, 200], acc, ppl, [0.5, 0.6, 0.7])
    s = premem.analyze([run], tmp_path / "a", threshold_loglog=T, figures=False, progress=False, verbose=False)
    assert [p["step"] for p in s["points"]] == [0, 100, 200]
    np.testing.assert_allclose([p["premem_acc"] for p in s["points"]], [0.5, 0.75, 0.75])
    s2 = premem.analyze([run], tmp_path / "b", threshold_loglog=T, include_step0=False, figures=False,
                        progress=False, verbose=False)
    assert [p["step"] for p in s2["points"]] == [100, 200]
    np.testing.assert_allclose([p["premem_acc"] for p in s2["points"]], [0.25, 0.25])
    assert s["include_step0"] is True and s2["include_step0"] is False


def planted_runs(root, t_star, n_runs=6, n_ex=1500, seed=0):
    """Runs whose test accuracy is exactly their mean PreMemAcc at loglog threshold t_star."""
    rng = np.random.default_rng(seed)
    dirs = []
    for r in range(n_runs):
        c = 2 + r % 3
        base = rng.random(n_ex)
        acc = np.clip(base[None] + 0.15 * np.arange(c)[:, None] * rng.random((c, n_ex)), 0, 1)
        acc = np.round(acc * 10) / 10
        ll = rng.uniform(-5, 1, (c, n_ex)) - 0.6 * np.arange(c)[:, None] * (r + 1) / n_runs
        ppl = np.exp(np.exp(ll))
        test = premem.premem_from_arrays(acc, ppl, threshold_loglog=t_star).mean(axis=1)
        dirs.append(write_run(root / f"run{r}", list(range(100, 100 * c + 1, 100)), acc, ppl, test,
                              lr=10.0 ** -(4 + r % 3), num_epochs=c))
    return dirs


def test_calibration_recovers_a_planted_threshold(tmp_path):
    grid = np.linspace(-5, 1, 50)
    t_star = float(grid[21])
    dirs = planted_runs(tmp_path, t_star)
    runs = premem.load_runs(dirs, progress=False)
    t, table = premem.calibrate_threshold(runs, grid)
    assert t == pytest.approx(t_star)
    assert table["r2"].max() == pytest.approx(1.0)
    # neighbours are clearly worse: the optimum is sharp, not a plateau
    assert table["r2"].iloc[20] < 0.999 and table["r2"].iloc[22] < 0.999
    s = premem.analyze(dirs, tmp_path / "out", grid=grid, figures=False, progress=False, verbose=False)
    assert s["threshold_loglog"] == pytest.approx(t_star) and s["r2"] == pytest.approx(1.0)


def test_calibrating_on_few_points_warns_and_a_given_threshold_does_not(tmp_path, capsys):
    acc = np.array([[0.0, 1.0], [1.0, 1.0]])
    ppl = np.array([[3.0, 3.0], [3.0, LOW]])
    run = write_run(tmp_path / "r", [100, 200], acc, ppl, [0.4, 0.6])
    premem.analyze([run], tmp_path / "a", figures=False, progress=False, verbose=False)
    assert "calibrated on only 2 (checkpoint, test accuracy) point(s)" in capsys.readouterr().err
    premem.analyze([run], tmp_path / "b", threshold_loglog=T, figures=False, progress=False, verbose=False)
    assert "calibrated on only" not in capsys.readouterr().err
    # enough points: no warning
    dirs = planted_runs(tmp_path / "many", -2.0)
    premem.analyze(dirs, tmp_path / "c", figures=False, progress=False, verbose=False)
    assert "calibrated on only" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- published results


@pytest.fixture(scope="session")
def published(tmp_path_factory):
    if not PUBLISHED.is_dir():
        pytest.skip(f"published Kang et al. results not found at {PUBLISHED}")
    root = tmp_path_factory.mktemp("published")
    dirs = premem.import_published(PUBLISHED, root / "runs", progress=False)
    out = root / "analysis"
    assert premem.main([ "analyze", *map(str, dirs), "--out", str(out)]) == 0
    return dict(dirs=dirs, runs=root / "runs", out=out, summary=json.loads((out / "summary.json").read_text()))


@needs_published
def test_import_published_layout(published):
    dirs = published["dirs"]
    assert len(dirs) == 7
    run = published["runs"] / "gsm8k_orig_3epochs_full_lr2e-05_bs128"
    cfg = records.read_run_config(run)
    assert cfg["task"] == "gsm8k" and cfg["learning_rate"] == 2e-5 and cfg["num_epochs"] == 3
    assert cfg["subset"] == "full" and cfg["batch_size"] == 128 and cfg["model"] == "meta-llama/Meta-Llama-3-8B"
    recs = records.list_records(run)
    assert [(s, sp) for s, sp, _, _ in recs] == [(58, "test"), (58, "train"), (116, "test"), (116, "train"),
                                                (174, "test"), (174, "train")]
    tr = records.read_records(records.record_path(run, 116, "train"))
    te = records.read_records(records.record_path(run, 116, "test"))
    assert len(tr) == 7473 and len(te) == 1319
    assert tr["id"].iloc[7] == "gsm8k/train/7" and te["id"].iloc[3] == "gsm8k/test/3"
    assert tr["epoch"].iloc[0] == 2.0 and tr["step"].iloc[0] == 116
    # this run published 50 train samples and 5 test samples per example (N read from the file name)
    assert len(tr["outcomes"].iloc[0]) == 50 and len(te["outcomes"].iloc[0]) == 5
    assert len(tr["samples"].iloc[0]) == 0
    types = np.load(PUBLISHED / run.name / "checkpoint-116/train_answer_types50_seed2_temp0.8.npy")
    np.testing.assert_allclose(tr["accuracy"].to_numpy(), (types == 0).mean(axis=1))
    ppl = np.load(PUBLISHED / run.name / "checkpoint-116/train_perplexities.npy")
    np.testing.assert_allclose(tr["perplexity"].to_numpy(), ppl)
    assert tr["target_tokens"].min() > 0 and te["perplexity"].isna().all()
    assert set(tr["outcomes"].iloc[1]) <= set(records.OUTCOMES)


@needs_published
def test_import_published_rerun_skips_existing(published, capsys):
    f = records.record_path(published["runs"] / "gsm8k_orig_1epochs_full_lr5e-05_bs128", 58, "train")
    before = f.stat().st_mtime_ns
    premem.import_published(PUBLISHED, published["runs"], progress=False)
    assert f.stat().st_mtime_ns == before
    assert "wrote 0 file(s)" in capsys.readouterr().out


@needs_published
def test_published_r2_and_authors_intermediate_array(published):
    s = published["summary"]
    # measured: loglog -2.4286 (ppl 1.0922), R^2 0.9653, Pearson r 0.9890, train-acc R^2 -0.977, 15 points
    assert s["r2"] >= 0.95
    assert s["threshold_loglog"] == pytest.approx(-2.4286, abs=1e-3)
    assert s["pearson_r"] > 0.98 and s["train_acc_r2"] < 0 and s["n_points"] == 15
    # the authors saved their PreMemAcc per example for one run (computed at loglog -2.5): reproduce it
    run = premem.load_run(published["runs"] / "gsm8k_orig_3epochs_full_lr2e-05_bs128")
    ref = np.load(PUBLISHED / "gsm8k_orig_3epochs_full_lr2e-05_bs128/unmemorized_acc_cummax_all.npy")
    order = np.array([int(i.rsplit("/", 1)[1]) for i in run.ids])
    ours = premem.premem_from_arrays(run.acc, run.ppl, threshold_loglog=-2.5)
    np.testing.assert_allclose(ours, ref[:, order], atol=1e-12)


@needs_published
def test_analyze_writes_documented_outputs(published):
    out, s = published["out"], published["summary"]
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
    for stem in ("fig1", "fig3", "fig4", "r2_vs_threshold"):
        png, pdf = out / "figures" / f"{stem}.png", out / "figures" / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert pdf.read_bytes()[:5] == b"%PDF-", stem
    assert not list(out.rglob("*.tmp"))


@needs_published
def test_calibrate_on_reports_heldout_r2(published, tmp_path, capsys):
    out = tmp_path / "held"
    rc = premem.main(["analyze", str(published["runs"] / "*"), "--out", str(out), "--no-figures",
                      "--calibrate-on", "*3epochs*"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert len(s["calibration_runs"]) == 4 and len(s["heldout_runs"]) == 3
    assert s["r2_heldout"] is not None and s["r2_calibration"] is not None
    assert s["r2_heldout"] > 0.5  # measured 0.96 (threshold -2.43, calibrated on the 3-epoch runs)
    assert "held-out runs: R^2" in capsys.readouterr().out
    assert "r2_heldout" in pd.read_csv(out / "sweep.csv").columns


@needs_published
def test_given_threshold_forms_agree(published, tmp_path):
    a = premem.analyze(published["dirs"], tmp_path / "a", threshold_loglog=-2.5, figures=False,
                       progress=False, verbose=False)
    b = premem.analyze(published["dirs"], tmp_path / "b", threshold_ppl=math.exp(math.exp(-2.5)),
                       figures=False, progress=False, verbose=False)
    assert a["threshold_source"] == "given" and a["r2"] == pytest.approx(b["r2"])
    assert a["r2"] < published["summary"]["r2"] + 1e-12


# ----------------------------------------------------------------------------- bad input


def test_folder_without_records_is_an_error(tmp_path, capsys):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    assert premem.main(["analyze", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not_a_run" in err and "no train records" in err


def test_folder_without_records_is_skipped_among_good_runs(tmp_path, capsys):
    dirs = planted_runs(tmp_path, -2.0, n_runs=2, n_ex=50)
    (tmp_path / "junk").mkdir()
    rc = premem.main(["analyze", *map(str, dirs), str(tmp_path / "junk"), "--out", str(tmp_path / "o"),
                      "--no-figures"])
    assert rc == 0
    assert "skipping" in capsys.readouterr().err
    assert json.loads((tmp_path / "o/summary.json").read_text())["n_runs"] == 2


def test_corrupt_record_file_error_names_the_file(tmp_path, capsys):
    run = planted_runs(tmp_path, -2.0, n_runs=1, n_ex=20)[0]
    bad = records.record_path(run, 200, "train")
    bad.write_bytes(b"not parquet")
    assert premem.main(["analyze", str(run), "--out", str(tmp_path / "o")]) == 2
    assert str(bad) in capsys.readouterr().err
    pd.DataFrame({"id": ["a"], "accuracy": [1.0]}).to_parquet(bad)
    assert premem.main(["analyze", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "missing columns" in err


def test_calibrate_on_unknown_run_is_an_error(tmp_path, capsys):
    dirs = planted_runs(tmp_path, -2.0, n_runs=2, n_ex=20)
    rc = premem.main(["analyze", *map(str, dirs), "--out", str(tmp_path / "o"), "--calibrate-on", "nope"])
    assert rc == 2 and "nope" in capsys.readouterr().err


# ----------------------------------------------------------------------------- import: subsets, file names


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
    premem.import_published(src.parent, tmp_path / "out", progress=False)
    run = tmp_path / "out" / src.name
    cfg = records.read_run_config(run)
    assert (cfg["task"], cfg["subset"], cfg["num_epochs"], cfg["learning_rate"], cfg["batch_size"]) == (
        "math", "half", 2, 2e-4, 64)
    assert json.loads((run / "subset_ids.json").read_text()) == [f"math/train/{i}" for i in sub]
    steps = [s for s, sp, _, _ in records.list_records(run) if sp == "train"]
    assert steps == [10, 20, 30, 40]
    df = records.read_records(records.record_path(run, 30, "train"))
    assert df["id"].tolist() == [f"math/train/{i}" for i in sorted(sub)]
    assert df["epoch"].iloc[0] == pytest.approx(1.5)  # 3rd of 4 checkpoints x 2 epochs / 4
    assert (df["target_tokens"] == -1).all()
    tr = np.load(src / "checkpoint-30/train_answer_types3_seed2.npy")
    assert df["outcomes"].iloc[0].tolist() == [records.OUTCOMES[k] for k in tr[0]]
    assert df["outcomes"].iloc[0][0] == "unparseable"
    np.testing.assert_allclose(df["accuracy"], (tr[np.sort(sub)] == 0).mean(axis=1))
    te = records.read_records(records.record_path(run, 30, "test"))
    assert len(te) == n_test and len(te["outcomes"].iloc[0]) == 20


def test_import_bad_answer_types_names_the_file(tmp_path, capsys):
    src = tmp_path / "ckpts" / "gsm8k_orig_1epochs_full_lr1e-05_bs8"
    ck = src / "checkpoint-5"
    ck.mkdir(parents=True)
    np.save(ck / "train_answer_types2_seed2.npy", np.full((3, 2), 7))
    np.save(ck / "test_answer_types2_seed2.npy", np.zeros((2, 2), dtype=int))
    np.save(ck / "train_perplexities.npy", np.ones(3) * 1.5)
    rc = premem.main(["import-published", str(src.parent), str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "train_answer_types2_seed2.npy" in err
