"""Tests for metric.py and its library: the metric (premem_kit/metric.py), calibration, analyze and its
figures, and bad input (the published results: test_published.py)."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_synthetic_run

import premem
from premem_kit.analysis import analyze as analysis
from premem_kit.analysis import analysis_figures
from premem_kit.analysis import calibration
from premem_kit.core import figures
from premem_kit import metric
from premem_kit.analysis import published
from premem_kit.core import records
from premem_kit.core import runs
from premem_kit.analysis.rundata import AnalysisError, load_run, load_runs

T = -2.0  # loglog threshold used by the hand-made sequences
P = math.exp(math.exp(T))  # = 1.1447 perplexity
LOW, HIGH = 1.05, 2.0  # memorized / not memorized at T


def pm(acc, ppl):
    """PreMemAcc of one example over checkpoints."""
    return metric.premem_from_arrays(np.array(acc)[:, None], np.array(ppl)[:, None], threshold_ppl=P)[:, 0]


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
    assert np.isneginf(metric.loglog([1.0, 0.999])).all()
    for t in (-50.0, -5.0, 0.0, 3.0):
        out = metric.premem_from_arrays([[1.0, 1.0, 1.0]], [[1.0, 0.999, np.nan]], threshold_loglog=t)
        np.testing.assert_allclose(out, [[0.0, 0.0, 0.0]])


def test_threshold_forms_agree_and_boundary_is_strict():
    rng = np.random.default_rng(1)
    acc = rng.random((5, 400))
    ppl = 1 + rng.exponential(0.3, (5, 400))
    for t in (-3.0, -2.4, -1.0):
        a = metric.premem_from_arrays(acc, ppl, threshold_loglog=t)
        b = metric.premem_from_arrays(acc, ppl, metric.ppl_from_loglog(t))
        np.testing.assert_array_equal(a, b)
    assert metric.ppl_from_loglog(-2.5) == pytest.approx(1.0855, abs=1e-4)
    assert metric.loglog_from_ppl(metric.ppl_from_loglog(-2.5)) == pytest.approx(-2.5)
    # ppl exactly at the threshold is not memorized (memorized <=> ppl < p)
    assert metric.premem_from_arrays([[0.7]], [[2.0]], 2.0)[0, 0] == 0.7
    with pytest.raises(ValueError):
        metric.premem_from_arrays([[0.7]], [[2.0]])


def test_predicted_test_accuracy_and_sweep_match_the_definition():
    rng = np.random.default_rng(2)
    acc = rng.random((4, 300))
    ppl = 1 + rng.exponential(0.5, (4, 300))
    grid = np.linspace(-4, 0, 9)
    sw = metric.premem_sweep(acc, metric.loglog(ppl), grid, max_elems=3000)  # forces chunking
    for k, t in enumerate(grid):
        ref = metric.predicted_test_accuracy(acc, ppl, threshold_loglog=t)
        # explicit double loop over checkpoints, straight from the paper's formula
        mem = np.log(np.log(ppl)) < t
        slow = np.array([[min(max(acc[j, i] * (not mem[j, i]) for j in range(m + 1)), acc[m, i])
                          for i in range(acc.shape[1])] for m in range(acc.shape[0])]).mean(axis=1)
        np.testing.assert_allclose(ref, slow)
        np.testing.assert_allclose(sw[k], slow)


def test_r2_identity_and_pearson():
    y = np.array([0.1, 0.2, 0.3, 0.4])
    assert metric.r2_identity(y, y) == 1.0
    assert metric.r2_identity(y, np.full(4, y.mean())) == pytest.approx(0.0)
    assert metric.r2_identity(y, y + 0.1) == pytest.approx(1 - 4 * 0.01 / 0.05)
    assert metric.pearson_r(y, 2 * y + 1) == pytest.approx(1.0)
    assert math.isnan(metric.r2_identity([0.3], [0.3]))
    np.testing.assert_allclose(metric.r2_identity(y, np.stack([y, y + 0.1])), [1.0, 0.2])


# ----------------------------------------------------------------------------- synthetic run folders

QUIET = dict(progress=False, verbose=False)
GRID = np.linspace(-5, 1, 50)
T_STAR = float(GRID[21])  # the threshold planted_runs plants


def test_step0_is_left_out_by_default_and_counts_when_asked(tmp_path):
    # example 0 is solved (unmemorized) by the base model, then memorized at every trained checkpoint
    acc = np.array([[1.0, 0.0], [1.0, 0.5], [1.0, 0.5]])
    ppl = np.array([[3.0, 3.0], [LOW, 3.0], [LOW, LOW]])
    run = write_synthetic_run(tmp_path / "r", [0, 100, 200], acc, ppl, [0.5, 0.6, 0.7])
    # the paper: max over trained checkpoints 1 <= m' <= m; the base model's solve does not count
    s = analysis.analyze([run], tmp_path / "a", threshold_loglog=T, figures=False, **QUIET)
    assert [p["step"] for p in s["points"]] == [100, 200]
    np.testing.assert_allclose([p["premem_acc"] for p in s["points"]], [0.25, 0.25])
    # asked for: step 0 is a point and its unmemorized solve is carried by the running max
    s2 = analysis.analyze([run], tmp_path / "b", threshold_loglog=T, include_step0=True, figures=False, **QUIET)
    assert [p["step"] for p in s2["points"]] == [0, 100, 200]
    np.testing.assert_allclose([p["premem_acc"] for p in s2["points"]], [0.5, 0.75, 0.75])
    assert s["include_step0"] is False and s2["include_step0"] is True
    # the command line: default, --no-step0 (the default, kept for old command lines), --include-step0
    for flags, want in (([], 2), (["--no-step0"], 2), (["--include-step0"], 3)):
        out = tmp_path / f"cli{len(flags)}{flags[:1]}"
        assert premem.main(["analyze", str(run), "--out", str(out), "--threshold", str(T), "--no-figures", *flags]) == 0
        assert len(json.loads((out / "summary.json").read_text())["points"]) == want


def test_figure4_points_half_and_quarter_runs_at_thirds_of_training(tmp_path):
    """The authors plot their half and quarter runs at checkpoints [1, 3, 5] of 6 (gsm8k_analyze.ipynb,
    math_analyze.ipynb): epochs 2, 4, 6 of the 6-epoch half run, 4, 8, 12 of the 12-epoch quarter run checkpointed
    every 2 epochs. The kit keeps the checkpoints at 1/3, 2/3 and the end of training: the same ones there, and
    epochs 4, 8, 12 of a quarter run checkpointed every epoch. Full runs keep every checkpoint; PreMemAcc's
    running max still runs over every checkpoint."""
    def run(name, subset, epochs, n_ckpt):
        c = len(epochs)
        acc = np.full((c, 4), 0.8)  # solved, unmemorized, only at the first checkpoint (then memorized)
        ppl = np.full((c, 4), 3.0)
        ppl[1:] = LOW  # memorized from the second checkpoint on
        return write_synthetic_run(tmp_path / name, [10 * (k + 1) for k in range(c)], acc, ppl,
                                   list(np.linspace(0.2, 0.7, c)), epochs=epochs,
                                   config=dict(subset=subset, num_epochs=n_ckpt))

    half = run("half", "half", [1, 2, 3, 4, 5, 6], 6)
    quarter = run("quarter", "quarter", [2, 4, 6, 8, 10, 12], 12)
    every = run("every", "quarter", list(range(1, 13)), 12)
    full = run("full", "full", [1, 2, 3], 3)
    s = analysis.analyze([half, quarter, every, full], tmp_path / "a", threshold_loglog=T, figures=False, **QUIET)
    got = {r: [(p["step"], p["epoch"]) for p in s["points"] if p["run"] == r] for r in ("half", "quarter", "every", "full")}
    assert got["half"] == [(20, 2.0), (40, 4.0), (60, 6.0)]  # checkpoints 1, 3, 5 of 6
    assert got["quarter"] == [(20, 4.0), (40, 8.0), (60, 12.0)]
    assert got["every"] == [(40, 4.0), (80, 8.0), (120, 12.0)]
    assert got["full"] == [(10, 1.0), (20, 2.0), (30, 3.0)]
    assert s["n_points"] == 12 and s["points_rule"].startswith("figure 4")
    # the first checkpoint is not a point, but its unmemorized solve is in the running max: PreMemAcc 0.8
    assert all(p["premem_acc"] == pytest.approx(0.8) for p in s["points"])
    # --all-checkpoints: every checkpoint with a test record (the kit's earlier rule)
    out = tmp_path / "all"
    assert premem.main(["analyze", str(half), str(quarter), str(every), str(full), "--out", str(out), "--threshold",
                        str(T), "--no-figures", "--all-checkpoints"]) == 0
    assert json.loads((out / "summary.json").read_text())["n_points"] == 6 + 6 + 12 + 3


def test_each_earlier_rule_has_its_option():
    """The defaults follow the papers and the authors' code (docs/differences.md); each option keeps the kit's
    earlier rule, parsed into the keyword the library takes."""
    ap = premem.build_parser()
    a = ap.parse_args(["analyze", "r", "--out", "o", "--all-checkpoints"])
    assert a.all_checkpoints is True
    a = ap.parse_args(["robustness", "r", "--out", "o"])
    assert (a.bins, a.no_bin_for_one, a.calibrate) == ([0, 0.2, 0.4, 0.6, 0.8, 1], False, False)
    a = ap.parse_args(["robustness", "r", "--out", "o", "--calibrate", "--bins", "0", "0.25", "0.5", "0.75", "1",
                       "--no-bin-for-one"])
    assert (a.bins, a.no_bin_for_one, premem.threshold_kwargs(a)["calibrate"]) == ([0, 0.25, 0.5, 0.75, 1], True, True)
    a = ap.parse_args(["priors", "r", "--out", "o"])
    assert (a.atc_fit_on, a.atc_score, a.grad_draw, a.grad_loss, a.distance_all_weights, a.calibrate) == \
        ("train", "sequence", "first", "example", False, False)
    a = ap.parse_args(["priors", "r", "--out", "o", "--atc-fit-on", "test", "--atc-score", "token-mean",
                       "--grad-draw", "random", "--grad-loss", "token", "--distance-all-weights", "--calibrate"])
    assert (a.atc_fit_on, a.atc_score, a.grad_draw, a.grad_loss, a.distance_all_weights, a.calibrate) == \
        ("test", "token-mean", "random", "token", True, True)


def planted_runs(root, t_star, n_runs=6, n_ex=1500, seed=0):
    """Runs whose test accuracy is exactly their mean PreMemAcc at loglog threshold t_star; run r has
    2 + r % 3 checkpoints, learning rate 10^-(4 + r % 3) and num_epochs = its number of checkpoints."""
    rng = np.random.default_rng(seed)
    dirs = []
    for r in range(n_runs):
        c = 2 + r % 3
        base = rng.random(n_ex)
        acc = np.clip(base[None] + 0.15 * np.arange(c)[:, None] * rng.random((c, n_ex)), 0, 1)
        acc = np.round(acc * 10) / 10
        ll = rng.uniform(-5, 1, (c, n_ex)) - 0.6 * np.arange(c)[:, None] * (r + 1) / n_runs
        ppl = np.exp(np.exp(ll))
        test = metric.premem_from_arrays(acc, ppl, threshold_loglog=t_star).mean(axis=1)
        dirs.append(write_synthetic_run(root / f"run{r}", list(range(100, 100 * c + 1, 100)), acc, ppl, test,
                                        config=dict(learning_rate=10.0 ** -(4 + r % 3), num_epochs=c)))
    return dirs


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """analyze (with figures) over planted_runs, calibrated on GRID."""
    root = tmp_path_factory.mktemp("planted")
    dirs = planted_runs(root / "runs", T_STAR)
    s = analysis.analyze(dirs, root / "out", grid=GRID, **QUIET)
    return dict(dirs=dirs, out=root / "out", summary=s, points=pd.DataFrame(s["points"]))


def test_calibration_recovers_a_planted_threshold(planted):
    t, table = calibration.calibrate_threshold(load_runs(planted["dirs"], progress=False), GRID)
    assert t == pytest.approx(T_STAR)
    assert table["r2"].max() == pytest.approx(1.0)
    # neighbours are clearly worse: the optimum is sharp, not a plateau
    assert table["r2"].iloc[20] < 0.999 and table["r2"].iloc[22] < 0.999
    s = planted["summary"]
    assert s["threshold_loglog"] == pytest.approx(T_STAR) and s["r2"] == pytest.approx(1.0)
    assert s["threshold_source"] == "calibrated" and s["n_runs"] == 6 and s["n_points"] == 2 + 3 + 4 + 2 + 3 + 4


def test_analyze_writes_the_files_it_lists(planted):
    out, s = planted["out"], planted["summary"]
    figs = [f"figures/{stem}.{ext}" for stem in ("fig1", "fig3", "fig4", "r2_vs_threshold") for ext in ("png", "pdf")]
    assert s["files"] == analysis.TABLE_FILES + figs
    assert all((out / f).is_file() for f in s["files"]) and not list(out.rglob("*.tmp"))
    assert json.loads((out / "summary.json").read_text()) == s
    sweep = pd.read_csv(out / "sweep.csv")
    np.testing.assert_allclose(sweep["threshold_loglog"], GRID)
    assert sweep["r2"].max() == pytest.approx(1.0) and "r2_heldout" not in sweep.columns
    ex = pd.read_parquet(out / "premem_examples.parquet")
    assert len(ex) == 6 * 1500 and ex["fragile"].equals(ex["premem_acc"] < 0.75)
    assert set(ex["step"]) == {200, 300, 400}  # each run's last checkpoint


def test_fig1_draws_a_line_per_run_with_r2_in_the_titles(planted):
    s, points = planted["summary"], planted["points"]
    fig = analysis_figures.fig1(points, s)
    try:
        assert len(fig.axes) == 2
        panels = (("train_acc", "train accuracy", s["train_acc_r2"]),
                  ("premem_acc", "pre-memorization train accuracy", s["r2"]))
        for ax, (col, label, r2) in zip(fig.axes, panels):
            assert ax.get_title() == f"{label} vs test accuracy (R$^2$ = {r2:.3f})"
            assert ax.get_xlabel() == label
            lines = ax.get_lines()
            assert lines[0].get_label() == "y = x"
            assert [ln.get_label() for ln in lines[1:]] == [f"run{r}" for r in range(6)]
            for r, ln in enumerate(lines[1:]):
                g = points[points["run"] == f"run{r}"].sort_values("step")
                assert len(ln.get_xdata()) == 2 + r % 3  # one point per checkpoint
                np.testing.assert_allclose(ln.get_xdata(), g[col])
                np.testing.assert_allclose(ln.get_ydata(), g["test_acc"])
        assert fig.axes[0].get_ylabel() == "test accuracy"
        assert fig.axes[1].get_title().endswith("(R$^2$ = 1.000)")
    finally:
        figures.pyplot().close(fig)


def test_fig4_colours_learning_rate_and_marks_heldout_runs(planted):
    s, points = planted["summary"], planted["points"].copy()
    points["calibration"] = points["run"] != "run0"
    fig = analysis_figures.fig4(points, dict(s, r2_heldout=0.5))
    try:
        ax = fig.axes[0]
        assert len(fig.axes) == 2  # the plot and its learning-rate colour bar
        assert fig.axes[1].get_ylabel() == "learning rate"
        assert ax.get_title() == (f"R$^2$ = {s['r2']:.3f} (held-out 0.500); loglog threshold {T_STAR:.2f} "
                                  f"(ppl {s['threshold_ppl']:.4g})")
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("pre-memorization train accuracy", "test accuracy")
        colls = [c for c in ax.collections if len(c.get_offsets())]
        xy = np.concatenate([c.get_offsets() for c in colls])
        want = points[["premem_acc", "test_acc"]].to_numpy()
        np.testing.assert_allclose(sorted(map(tuple, xy)), sorted(map(tuple, want)))  # every point, once
        np.testing.assert_allclose(np.sort(np.concatenate([c.get_array() for c in colls])), np.sort(points["lr"]))
        held = [c for c in colls if len(c.get_edgecolor()) and np.allclose(c.get_edgecolor()[:, :3], 0)]
        np.testing.assert_allclose(np.concatenate([c.get_offsets() for c in held]),
                                   points.loc[points["run"] == "run0", ["premem_acc", "test_acc"]])
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["2 epochs", "3 epochs", "4 epochs", "held-out run", "y = x"]
    finally:
        figures.pyplot().close(fig)


def test_r2_vs_threshold_plots_the_sweep_and_the_choice(planted):
    s, sweep = planted["summary"], pd.read_csv(planted["out"] / "sweep.csv")
    fig = analysis_figures.r2_vs_threshold(sweep, s)
    try:
        ax = fig.axes[0]
        r2, train, chosen = ax.get_lines()
        assert r2.get_label() == "PreMemAcc R$^2$"
        np.testing.assert_allclose(r2.get_xdata(), GRID)
        np.testing.assert_allclose(r2.get_ydata(), sweep["r2"])
        # train accuracy's R^2 (-1.57) is below the axis (which stops at -1.05): drawn on the lower edge, and said
        lo, hi = ax.get_ylim()
        assert s["train_acc_r2"] < lo == pytest.approx(-1.05)
        assert train.get_label() == f"train accuracy R$^2$ ({s['train_acc_r2']:.3f}, below the axis)"
        np.testing.assert_allclose(train.get_ydata(), lo + 0.01)
        n_below = int((sweep["r2"] < lo).sum())
        texts = [t.get_text() for t in ax.texts]
        assert n_below > 0 and texts == [f"PreMemAcc R$^2$ below {lo:.2f} at {n_below} threshold(s)"]
        np.testing.assert_allclose(chosen.get_xdata(), T_STAR)
        assert ax.get_xlabel() == "memorization threshold log(log(perplexity))"
    finally:
        figures.pyplot().close(fig)
    fig = analysis_figures.r2_vs_threshold(sweep.assign(r2_heldout=sweep["r2"] - 0.1), s)
    try:
        labels = [ln.get_label() for ln in fig.axes[0].get_lines()]
        assert labels[:2] == ["PreMemAcc R$^2$ (calibration runs)", "PreMemAcc R$^2$ (held-out runs)"]
        np.testing.assert_allclose(fig.axes[0].get_lines()[1].get_ydata(), sweep["r2"] - 0.1)
    finally:
        figures.pyplot().close(fig)


def test_fig3_shows_the_ordered_examples_of_the_longest_run(planted):
    runs_ = load_runs(planted["dirs"], progress=False)
    run = analysis_figures.choose_fig3_run(runs_)
    assert run.name == "run2"  # the first of the runs with 4 checkpoints
    assert analysis_figures.choose_fig3_run(runs_, "run4").name == "run4"
    with pytest.raises(AnalysisError, match="--fig3-run 'nope'"):
        analysis_figures.choose_fig3_run(runs_, "nope")
    fig = analysis_figures.fig3(run, planted["summary"])
    try:
        ax = fig.axes[0]
        img = ax.images[0].get_array()
        assert img.shape == (200, 4, 3)  # 200 of the 1500 examples x 4 checkpoints
        order = analysis_figures.fig3_order(run.acc, run.ll, T_STAR)
        # brightness (HSV value = the largest RGB channel) is 0.1 + 0.9 * accuracy, row by row in fig3_order
        np.testing.assert_allclose(img.max(axis=2), 0.1 + 0.9 * run.acc[:, order].T)
        assert ax.get_title() == "Figure 3: learning progression, run2"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["100\n(1 ep)", "200\n(2 ep)", "300\n(3 ep)", "400\n(4 ep)"]
        assert "(200 of 1500)" in ax.get_ylabel()
    finally:
        figures.pyplot().close(fig)


def test_fig3_order_earliest_memorized_first_never_memorized_last():
    t = 0.0  # memorized <=> loglog < 0
    M, U = -1.0, 1.0
    ll = np.array([  # [checkpoint, example]
        [U, M, U, U, U, U],
        [U, M, U, U, U, M],
        [M, M, U, M, U, M],
        [M, M, U, M, U, M],
    ])
    acc = np.array([
        [0.2, 1.0, 0.1, 0.5, 0.3, 0.9],
        [0.4, 1.0, 0.2, 0.7, 0.5, 0.9],
        [0.9, 1.0, 0.3, 0.8, 0.6, 0.9],
        [0.9, 1.0, 0.3, 0.8, 0.6, 0.9],
    ])
    # first memorized: ex1 at 0, ex5 at 1, ex0 and ex3 at 2 (PreMemAcc 0.4 and 0.7: ex3 first),
    # ex2 and ex4 never (PreMemAcc 0.3 and 0.6: ex4 first)
    np.testing.assert_array_equal(analysis_figures.fig3_order(acc, ll, t), [1, 5, 3, 0, 4, 2])
    # more examples than shown: a fixed subsample, ordered the same way
    sub = analysis_figures.fig3_order(acc, ll, t, max_examples=4)
    assert len(sub) == 4 and np.array_equal(sub, analysis_figures.fig3_order(acc, ll, t, max_examples=4))
    rank = {e: k for k, e in enumerate([1, 5, 3, 0, 4, 2])}
    assert [rank[e] for e in sub] == sorted(rank[e] for e in sub)


def test_calibrating_on_few_points_warns_and_a_given_threshold_does_not(tmp_path, planted, capsys):
    acc = np.array([[0.0, 1.0], [1.0, 1.0]])
    ppl = np.array([[3.0, 3.0], [3.0, LOW]])
    run = write_synthetic_run(tmp_path / "r", [100, 200], acc, ppl, [0.4, 0.6])
    analysis.analyze([run], tmp_path / "a", figures=False, **QUIET)
    assert "calibrated on only 2 (checkpoint, test accuracy) point(s)" in capsys.readouterr().err
    analysis.analyze([run], tmp_path / "b", threshold_loglog=T, figures=False, **QUIET)
    assert "calibrated on only" not in capsys.readouterr().err
    # enough points: no warning
    analysis.analyze(planted["dirs"], tmp_path / "c", figures=False, **QUIET)
    assert "calibrated on only" not in capsys.readouterr().err


def test_folder_without_records_is_an_error(tmp_path, capsys):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    assert premem.main(["analyze", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "premem.py analyze: error:" in err and "not_a_run" in err and "no train records" in err


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
    bad = runs.record_path(run, 200, "train")
    bad.write_bytes(b"not parquet")
    assert premem.main(["analyze", str(run), "--out", str(tmp_path / "o")]) == 2
    assert str(bad) in capsys.readouterr().err
    pd.DataFrame({"id": ["a"], "accuracy": [1.0]}).to_parquet(bad)
    assert premem.main(["analyze", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "missing columns" in err


def test_bad_options_are_errors_not_tracebacks(tmp_path, capsys):
    dirs = planted_runs(tmp_path, -2.0, n_runs=2, n_ex=20)
    argv = ["analyze", *map(str, dirs), "--out", str(tmp_path / "o")]
    assert premem.main(argv + ["--calibrate-on", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):  # refused while parsing
        premem.main(argv + ["--threshold", "nan"])
    assert "finite" in capsys.readouterr().err
    assert premem.main(argv + ["--fragile-t", "2"]) == 2
    assert "fragile threshold must be in [0, 1]" in capsys.readouterr().err
    assert premem.main(argv + ["--sweep-points", "0"]) == 2
    assert "bad sweep grid" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- import: subsets, file names


