"""premem.py robustness (premem_kit/analysis/robustness.py): PreMemAcc bins, the table, Spearman, Figure 7's
violins and the Figure 6 panel on hand-made records whose every number is known."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO_DATA, record_rows, write_synthetic_run
from scipy.stats import spearmanr

import premem
from premem_kit.tasks import data
from premem_kit.core import figures
from premem_kit import metric
from premem_kit.core import records
from premem_kit.analysis import robustness
from premem_kit.analysis.defaults import EARLIER_BINS
from premem_kit.core import runs
from premem_kit.analysis.rundata import AnalysisError, load_run
from premem_kit.core.config import DataSettings

T = -2.0  # loglog threshold: memorized <=> ppl < exp(exp(-2)) = 1.1447
L, H = 1.05, 2.0  # memorized / not memorized perplexity
N = 4  # samples per prompt
# per example: (acc step 10, ppl step 10, acc step 20, ppl step 20, acc "first", acc "we_know_that") at step 20
EXAMPLES = [
    (0.00, H, 0.00, H, 0.00, 0.00),  # PreMemAcc 0
    (1.00, L, 1.00, L, 0.00, 0.25),  # memorized throughout: PreMemAcc 0, fragile under perturbation
    (0.25, H, 0.25, H, 0.25, 0.00),  # 0.25
    (0.50, H, 1.00, L, 0.50, 0.25),  # min(max(0.5, 0), 1.0) = 0.5
    (0.50, H, 0.50, H, 0.50, 0.50),  # 0.5
    (0.75, H, 0.75, H, 0.75, 0.50),  # 0.75
    (1.00, H, 1.00, L, 1.00, 0.75),  # 1.0
    (1.00, H, 1.00, H, 1.00, 1.00),  # 1.0
]
PREMEM = [0, 0, 0.25, 0.5, 0.5, 0.75, 1.0, 1.0]
IDS = [f"gsm8k/train/{k}" for k in range(len(EXAMPLES))]


def make_run(folder, variants=robustness.VARIANT_ORDER):
    """Original records at steps 10 and 20 (conftest.write_synthetic_run), the perturbed variants at 20."""
    cols = list(zip(*EXAMPLES))
    write_synthetic_run(folder, [10, 20], [cols[0], cols[2]], [cols[1], cols[3]], ids=IDS, epochs=[1.0, 2.0],
                        config={"data": str(DEMO_DATA), "learning_rate": 1e-4})
    for v, c in (("first", 4), ("we_know_that", 5)):
        if v in variants:
            samples = [[f"{v} {j} {i}: $7 #### 7 / 1 = $7" for j in range(N)] for i in IDS]  # "$": no mathtext
            records.write_records(runs.record_path(folder, 20, "train", v),
                                  record_rows(IDS, 20, "train", cols[c], epoch=2.0, variant=v, n_samples=N,
                                              samples=samples))
    return folder


def test_bin_index_edges():
    e = [0, 0.25, 0.5, 0.75, 1]
    np.testing.assert_array_equal(robustness.bin_index([0, 0.2499, 0.25, 0.5, 0.74, 0.75, 1.0], e), [0, 0, 1, 2, 2, 3, 3])
    assert robustness.bin_labels(e) == ["[0, 0.25)", "[0.25, 0.5)", "[0.5, 0.75)", "[0.75, 1]"]
    # the authors' bins: [f, f + 0.2) for f = 0 ... 0.8 and a bin of its own for PreMemAcc = 1; PreMemAcc of 5
    # or 10 samples (k/5, k/10) falls in the bin whose lower edge it equals
    d = robustness.DEFAULT_BINS
    assert list(d) == [0, 0.2, 0.4, 0.6, 0.8, 1] and robustness.DEFAULT_BIN_FOR_ONE
    x = [k / 5 for k in range(6)] + [k / 10 for k in range(11)] + [0.7999, 0.9999]
    want = [0, 1, 2, 3, 4, 5] + [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5] + [3, 4]
    np.testing.assert_array_equal(robustness.bin_index(x, d, bin_for_one=True), want)
    assert robustness.bin_labels(d, bin_for_one=True) == ["[0, 0.2)", "[0.2, 0.4)", "[0.4, 0.6)", "[0.6, 0.8)",
                                                          "[0.8, 1)", "1"]
    assert robustness.n_bins(d, True) == 6 and robustness.bin_index([1.0], d).tolist() == [4]  # without: closed
    with pytest.raises(AnalysisError, match="increasing"):
        robustness.bin_index([0.5], [0, 0.5, 0.5, 1])
    with pytest.raises(AnalysisError, match="outside"):
        robustness.bin_index([0.1], [0.2, 1])


def test_binning_table_spearman_and_outputs(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    # the kit's earlier 4 bins, the last closed (premem.py robustness --bins 0 0.25 0.5 0.75 1 --no-bin-for-one)
    robustness.run_robustness(run, out, threshold_loglog=T, edges=EARLIER_BINS, bin_for_one=False, verbose=False)
    res = json.loads((out / "robustness.json").read_text())
    assert res["step"] == 20 and res["epoch"] == 2.0 and res["n_examples"] == 8 and res["threshold_loglog"] == T
    assert res["threshold_source"] == "given"
    ex = pd.read_csv(out / "robustness_examples.csv")
    np.testing.assert_allclose(ex["premem_acc"], PREMEM)
    np.testing.assert_array_equal(ex["bin"], [0, 0, 1, 2, 2, 3, 3, 3])
    table = pd.read_csv(out / "robustness_table.csv")
    assert table["n"].tolist() == [2, 1, 2, 3]
    np.testing.assert_allclose(table["acc_original"], [0.5, 0.25, 0.75, 11 / 12])
    np.testing.assert_allclose(table["acc_first"], [0.0, 0.25, 0.5, 11 / 12])
    np.testing.assert_allclose(table["acc_we_know_that"], [0.125, 0.0, 0.375, 0.75])
    assert res["table"][3]["acc_we_know_that"] == pytest.approx(0.75)
    # "first" accuracy is a monotone function of PreMemAcc here: rank correlation exactly 1
    assert res["spearman_first"] == pytest.approx(1.0)
    wkt = [e[5] for e in EXAMPLES]
    assert res["spearman_we_know_that"] == pytest.approx(spearmanr(PREMEM, wkt).statistic)
    pooled = [(e[4] + e[5]) / 2 for e in EXAMPLES]
    assert res["spearman_perturbed_mean"] == pytest.approx(spearmanr(PREMEM, pooled).statistic)
    assert 0.8 < res["spearman_we_know_that"] < 1
    assert res["files"] == robustness.OUTPUT_FILES + ["figures/fig7.png", "figures/fig7.pdf",
                                                      "figures/fig6.png", "figures/fig6.pdf"]
    assert all((out / f).is_file() for f in res["files"])
    # Figure 6 panel: examples spread over PreMemAcc, the question from the data, each prompt's sample
    ex6 = json.loads((out / "fig6_examples.json").read_text())
    assert [e["premem_acc"] for e in ex6] == [0.0, 0.5, 1.0]
    assert ex6[0]["id"] == "gsm8k/train/1"  # among PreMemAcc 0, the one right under the original prompt
    assert ex6[0]["question"] == data.load_split(DataSettings(data=str(DEMO_DATA)), "train")[1]["question"]
    assert [v["variant"] for v in ex6[0]["variants"]] == ["original", "first", "we_know_that"]
    assert [v["outcome"] for v in ex6[0]["variants"]] == ["correct", "incorrect", "correct"]
    assert ex6[0]["variants"][1]["sample"] == "first 0 gsm8k/train/1: $7 #### 7 / 1 = $7"


def test_fig6_draws_one_panel_per_example_and_prompt(tmp_path):
    run = load_run(make_run(tmp_path / "run"))
    df, raw = robustness.example_frame(run, 20, T)
    ex6 = robustness.fig6_examples(run, df, raw, 3)
    fig = robustness.fig6(ex6, "the title")
    try:
        assert len(fig.axes) == 3 * 3  # 3 examples x 3 prompts
        assert fig.get_suptitle() == "the title"
        titles = [ax.get_title() for ax in fig.axes]
        assert titles[:3] == ["original: correct (acc 1.00)", "first: incorrect (acc 0.00)",
                              "we_know_that: correct (acc 0.25)"]
        text = fig.axes[1].texts[0].get_text()
        assert text.startswith("[first] ...Answer: First\n") and "first 0 gsm8k/train/1: $7 #### 7 / 1 = $7" in text
        head = fig.axes[0].texts[0].get_text()
        assert head.startswith("gsm8k/train/1  PreMemAcc 0.00\n")
        assert not any(ax.texts[0].get_text().startswith("gsm8k/") for k, ax in enumerate(fig.axes) if k % 3)
    finally:
        figures.pyplot().close(fig)


def test_violins_have_the_bin_means_as_lines(tmp_path):
    from matplotlib.collections import LineCollection, PolyCollection

    run = load_run(make_run(tmp_path / "run"))
    df, _ = robustness.example_frame(run, 20, T)
    fig, means = robustness.fig7(df, EARLIER_BINS, "t")
    try:
        assert means[(0, "we_know_that")] == pytest.approx(0.125)
        assert means[(3, "first")] == pytest.approx(11 / 12)
        assert len(means) == 4 * 3  # every bin x variant has examples
        ax = fig.axes[0]
        bodies = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bodies) == 12
        lines = [c for c in ax.collections if isinstance(c, LineCollection)]
        ys = sorted(seg[0][1] for lc in lines for seg in lc.get_segments())
        np.testing.assert_allclose(ys, sorted(means.values()))
        for lc in lines:
            for seg in lc.get_segments():
                assert seg[0][1] == pytest.approx(seg[1][1])  # horizontal mean lines
        assert [t.get_text() for t in ax.get_xticklabels()] == [
            "[0, 0.25)\nn=2", "[0.25, 0.5)\nn=1", "[0.5, 0.75)\nn=2", "[0.75, 1]\nn=3"]
    finally:
        figures.pyplot().close(fig)


def test_threshold_changes_the_memorized_set_and_the_bins(tmp_path):
    run = load_run(make_run(tmp_path / "run"))
    edges = EARLIER_BINS
    at_t, _ = robustness.example_frame(run, 20, T)
    # a perplexity threshold below every perplexity memorizes nothing: PreMemAcc = accuracy at step 20
    none, _ = robustness.example_frame(run, 20, metric.loglog_from_ppl(1.01))
    np.testing.assert_allclose(at_t["premem_acc"], PREMEM)
    np.testing.assert_allclose(none["premem_acc"], [e[2] for e in EXAMPLES])
    # only the examples memorized at T change: 1 (memorized throughout) and 3 (memorized at step 20)
    assert np.flatnonzero(at_t["premem_acc"] != none["premem_acc"]).tolist() == [1, 3]
    t_table, t_corr = robustness.robustness_table(at_t, edges)
    n_table, n_corr = robustness.robustness_table(none, edges)
    assert t_table["n"].tolist() == [2, 1, 2, 3] and n_table["n"].tolist() == [1, 1, 1, 5]
    np.testing.assert_allclose(n_table["acc_first"], [0.0, 0.25, 0.5, 0.65])  # (0 + 0.5 + 0.75 + 1 + 1) / 5
    assert t_corr["spearman_first"] == pytest.approx(1.0)
    assert n_corr["spearman_first"] == pytest.approx(spearmanr([e[2] for e in EXAMPLES], [e[4] for e in EXAMPLES]).statistic)
    assert n_corr["spearman_first"] < 0.9
    # a threshold above every perplexity memorizes everything: all PreMemAcc 0, one bin
    allmem, _ = robustness.example_frame(run, 20, metric.loglog_from_ppl(3.0))
    np.testing.assert_allclose(allmem["premem_acc"], 0.0)
    assert robustness.robustness_table(allmem, edges)[0]["n"].tolist() == [8, 0, 0, 0]


def test_missing_variants_name_the_evaluate_command(tmp_path, capsys):
    run = make_run(tmp_path / "run", variants=("first",))
    assert premem.main(["robustness", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "premem.py robustness: error:" in err
    assert "we_know_that" in err and "evaluate.py" in err and "--eval_variants original first we_know_that" in err
    assert not (tmp_path / "o").exists()
    run2 = make_run(tmp_path / "run2")
    assert premem.main(["robustness", str(run2), "--out", str(tmp_path / "o"), "--step", "10"]) == 2
    assert "step 10 lacks train records" in capsys.readouterr().err
    bad = tmp_path / "summary.json"
    bad.write_text("{}")
    assert premem.main(["robustness", str(run2), "--out", str(tmp_path / "o"), "--threshold-from", str(bad)]) == 2
    assert "threshold_loglog" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):  # refused while parsing
        premem.main(["robustness", str(run2), "--out", str(tmp_path / "o"), "--threshold-ppl", "0"])
    assert "expected a perplexity > 1" in capsys.readouterr().err


def test_threshold_from_analyze_summary_and_calibrated(tmp_path):
    run = make_run(tmp_path / "run")
    s = tmp_path / "summary.json"
    s.write_text(json.dumps({"threshold_loglog": T}))
    res = robustness.run_robustness(run, tmp_path / "o", threshold_from=s, figures=False, verbose=False)
    assert res["threshold_loglog"] == T and res["threshold_source"] == f"from {s}"
    assert res["spearman_first"] == pytest.approx(1.0)
    assert res["files"] == robustness.OUTPUT_FILES and not (tmp_path / "o" / "figures").exists()
    # --calibrate (the kit's earlier default) on a run without test records: impossible, and the error says
    # what to give
    with pytest.raises(AnalysisError, match="give the threshold with --threshold"):
        robustness.run_robustness(run, tmp_path / "o2", calibrate=True, figures=False, verbose=False)


def test_defaults_are_the_authors_task_threshold_and_bins(tmp_path, capsys):
    """Figure 7 as the authors' gsm8k_orig_perplexity_gpt4o.ipynb: the task's fixed threshold (GSM8K -2.3),
    bins [0, 0.2), ..., [0.8, 1) and one for PreMemAcc = 1; fewer than their 10 samples per prompt is said."""
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    assert premem.main(["robustness", str(run), "--out", str(out), "--no-figures"]) == 0
    res = json.loads((out / "robustness.json").read_text())
    assert res["threshold_loglog"] == -2.3 and res["threshold_source"] == "gsm8k default (the authors' -2.3)"
    assert res["bins"] == [0, 0.2, 0.4, 0.6, 0.8, 1] and res["bin_for_one"] is True
    table = pd.read_csv(out / "robustness_table.csv")
    # PreMemAcc at -2.3 equals that at T (no perplexity between): 0, 0 | 0.25 | 0.5, 0.5 | 0.75 | - | 1, 1
    assert table["bin"].tolist() == ["[0, 0.2)", "[0.2, 0.4)", "[0.4, 0.6)", "[0.6, 0.8)", "[0.8, 1)", "1"]
    assert table["n"].tolist() == [2, 1, 2, 1, 0, 2]
    np.testing.assert_allclose(table["acc_first"], [0.0, 0.25, 0.5, 0.75, np.nan, 1.0])
    np.testing.assert_allclose(table["acc_we_know_that"], [0.125, 0.0, 0.375, 0.5, np.nan, 0.875])
    assert table[["lo", "hi"]].iloc[-1].tolist() == [1.0, 1.0]
    assert res["samples_per_prompt"] == {"original": 4, "first": 4, "we_know_that": 4}
    assert "the authors' Figure 7 uses 10" in capsys.readouterr().err
    # a task without a known threshold needs one given
    cfg = tmp_path / "run" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("task: gsm8k", "task: arith"))
    assert premem.main(["robustness", str(run), "--out", str(tmp_path / "o3"), "--no-figures"]) == 2
    assert "no default memorization threshold for task(s) ['arith']" in capsys.readouterr().err
