"""robustness.py (premem.py robustness): PreMemAcc bins, the table, Spearman, Figure 7's violins and
the Figure 6 panel on hand-made records whose every number is known."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import spearmanr

import premem
import records
import robustness
from conftest import DEMO_DATA

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


def _rows(ids, step, variant, accs, ppls):
    rows = []
    for i, a, p in zip(ids, accs, ppls):
        k = round(a * N)
        outcomes = ["correct"] * k + ["incorrect"] * (N - k)
        rows.append({"id": i, "step": step, "epoch": step / 10, "split": "train", "variant": variant,
                     "samples": [f"{variant} {j} {i}: $7 #### 7 / 1 = $7" for j in range(N)],  # "$": no mathtext
                     "answers": ["1"] * N, "outcomes": outcomes, "accuracy": k / N,
                     "perplexity": p, "target_tokens": 10})
    return rows


def make_run(folder, variants=robustness.VARIANT_ORDER, step2_variants=True):
    folder.mkdir(parents=True)
    ids = [f"gsm8k/train/{k}" for k in range(len(EXAMPLES))]
    (folder / "config.yaml").write_text(yaml.safe_dump({"task": "gsm8k", "data": str(DEMO_DATA), "learning_rate": 1e-4}))
    cols = list(zip(*EXAMPLES))
    records.write_records(records.record_path(folder, 10, "train"), _rows(ids, 10, "original", cols[0], cols[1]))
    records.write_records(records.record_path(folder, 20, "train"), _rows(ids, 20, "original", cols[2], cols[3]))
    nan = [math.nan] * len(ids)
    for v, c in (("first", 4), ("we_know_that", 5)):
        if v in variants:
            records.write_records(records.record_path(folder, 20, "train", v), _rows(ids, 20, v, cols[c], nan))
            if not step2_variants:
                records.write_records(records.record_path(folder, 10, "train", v), _rows(ids, 10, v, cols[c], nan))
    return folder


def test_bin_index_edges():
    e = [0, 0.25, 0.5, 0.75, 1]
    np.testing.assert_array_equal(robustness.bin_index([0, 0.2499, 0.25, 0.5, 0.74, 0.75, 1.0], e), [0, 0, 1, 2, 2, 3, 3])
    assert robustness.bin_labels(e) == ["[0, 0.25)", "[0.25, 0.5)", "[0.5, 0.75)", "[0.75, 1]"]
    with pytest.raises(premem.PremError, match="increasing"):
        robustness.bin_index([0.5], [0, 0.5, 0.5, 1])
    with pytest.raises(premem.PremError, match="outside"):
        robustness.bin_index([0.1], [0.2, 1])


def test_binning_table_spearman_and_outputs(tmp_path):
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    assert premem.main(["robustness", str(run), "--out", str(out), "--threshold", str(T)]) == 0
    res = json.loads((out / "robustness.json").read_text())
    assert res["step"] == 20 and res["n_examples"] == 8 and res["threshold_loglog"] == T
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
    for f in ("fig7.png", "fig7.pdf", "fig6.png", "fig6.pdf"):
        assert (out / "figures" / f).stat().st_size > 1000
    # Figure 6 panel: examples spread over PreMemAcc, the question from the data, each prompt's sample
    ex6 = json.loads((out / "fig6_examples.json").read_text())
    assert [e["premem_acc"] for e in ex6] == [0.0, 0.5, 1.0]
    assert ex6[0]["id"] == "gsm8k/train/1"  # among PreMemAcc 0, the one right under the original prompt
    import data

    assert ex6[0]["question"] == data.load_split("gsm8k", str(DEMO_DATA), "train")[1]["question"]
    assert [v["variant"] for v in ex6[0]["variants"]] == ["original", "first", "we_know_that"]
    assert [v["outcome"] for v in ex6[0]["variants"]] == ["correct", "incorrect", "correct"]
    assert ex6[0]["variants"][1]["sample"] == "first 0 gsm8k/train/1: $7 #### 7 / 1 = $7"


def test_violins_have_the_bin_means_as_lines(tmp_path):
    from matplotlib.collections import LineCollection, PolyCollection

    run = premem.load_run(make_run(tmp_path / "run"))
    df, _ = robustness.example_frame(run, 20, T)
    fig, means = robustness.fig7(df, robustness.DEFAULT_BINS, "t")
    assert means[(0, "we_know_that")] == pytest.approx(0.125)
    assert means[(3, "first")] == pytest.approx(11 / 12)
    assert len(means) == 4 * 3  # every bin x variant has examples
    ax = fig.axes[0]
    bodies = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bodies) == 12
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    ys = sorted(seg[0][1] for lc in lines for seg in lc.get_segments())
    np.testing.assert_allclose(ys, sorted(means.values()))
    # each mean line sits over its bin: x within [bin - 0.5, bin + 0.5]
    for lc in lines:
        for seg in lc.get_segments():
            assert seg[0][1] == pytest.approx(seg[1][1])


def test_threshold_changes_the_bins(tmp_path):
    """A threshold below every perplexity memorizes nothing: PreMemAcc = accuracy at step 20."""
    run = premem.load_run(make_run(tmp_path / "run"))
    df, _ = robustness.example_frame(run, 20, premem.loglog_from_ppl(1.01))
    np.testing.assert_allclose(df["premem_acc"], [e[2] for e in EXAMPLES])


def test_missing_variants_name_the_evaluate_command(tmp_path, capsys):
    run = make_run(tmp_path / "run", variants=("first",))
    assert premem.main(["robustness", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "we_know_that" in err and "evaluate.py" in err and "--variants original first we_know_that" in err
    assert not (tmp_path / "o").exists()
    run2 = make_run(tmp_path / "run2")
    assert premem.main(["robustness", str(run2), "--out", str(tmp_path / "o"), "--step", "10"]) == 2
    assert "step 10 lacks train records" in capsys.readouterr().err
    bad = tmp_path / "summary.json"
    bad.write_text("{}")
    assert premem.main(["robustness", str(run2), "--out", str(tmp_path / "o"), "--threshold-from", str(bad)]) == 2
    assert "threshold_loglog" in capsys.readouterr().err


def test_threshold_from_analyze_summary(tmp_path):
    run = make_run(tmp_path / "run")
    s = tmp_path / "summary.json"
    s.write_text(json.dumps({"threshold_loglog": T}))
    res = robustness.run_robustness(run, tmp_path / "o", threshold_args=type("A", (), dict(
        threshold=None, threshold_ppl=None, threshold_from=s))(), figures=False, verbose=False)
    assert res["threshold_loglog"] == T and res["threshold_source"].startswith("from ")
    assert res["spearman_first"] == pytest.approx(1.0)
