"""The question bootstrap of analyze's R^2 (analysis/bootstrap.py): a case with no question-to-question
variation has a zero-width interval at the point value; with noisy questions the interval holds the point
value and narrows with more questions."""
from pathlib import Path

import numpy as np

from conftest import write_synthetic_run
from premem_kit.analysis.analyze import analyze
from premem_kit.analysis.bootstrap import question_bootstrap
from premem_kit.analysis.rundata import RunData
from premem_kit.metric import premem_loglog, r2_identity


def test_identical_questions_give_a_zero_width_interval_at_the_point_value(tmp_path):
    """Every train question of a checkpoint has the same accuracy and perplexity, every test question the
    same accuracy: resampling questions changes nothing, so the interval is the analyze R^2 itself."""
    for k, (acc, test) in enumerate([(0.2, 0.25), (0.5, 0.4), (0.8, 0.6)]):
        write_synthetic_run(tmp_path / f"run{k}", [10, 20], [[acc / 2] * 5, [acc] * 5], [[3.0] * 5, [2.0] * 5],
                            [test / 2, test], n_test=4)
    s = analyze([str(tmp_path / "run*")], tmp_path / "out", threshold_loglog=-2.3, figures=False, verbose=False,
                progress=False, bootstrap=50)
    b = s["bootstrap"]
    assert b["resamples"] == 50
    assert np.allclose(b["r2"], [s["r2"]] * 2) and np.allclose(b["train_acc_r2"], [s["train_acc_r2"]] * 2)


def noisy_runs(n_train, n_test, seed=0):
    """Four runs whose true accuracies differ; each question's accuracy is the run's plus question noise."""
    rng = np.random.default_rng(seed)
    test_q = rng.normal(0, 0.2, n_test)  # shared test questions: easy and hard ones
    runs = []
    for k, level in enumerate([0.2, 0.35, 0.5, 0.65]):
        acc = np.clip(level + rng.normal(0, 0.25, (2, n_train)), 0, 1)
        test = np.clip(level + test_q[None, :] + rng.normal(0, 0.05, (2, n_test)), 0, 1)
        runs.append(RunData(name=f"run{k}", path=Path(f"run{k}"), config={}, steps=np.array([1, 2]),
                            epochs=np.array([1.0, 2.0]), ids=np.array([f"q{i}" for i in range(n_train)], dtype=object),
                            acc=acc, ppl=np.full((2, n_train), 3.0), test_acc=test.mean(1), n_test=np.array([n_test] * 2),
                            test_ids=np.array([f"t{i:04d}" for i in range(n_test)], dtype=object), test_matrix=test))
    return runs


def test_noisy_questions_give_an_interval_that_narrows_with_more_questions():
    def width_and_point(n_train, n_test):
        runs = noisy_runs(n_train, n_test)
        b = question_bootstrap(runs, -2.3, None, resamples=400, seed=1)
        px = np.concatenate([premem_loglog(r.acc, r.ll, -2.3).mean(1) for r in runs])
        py = np.concatenate([r.test_acc for r in runs])
        return b["r2"][1] - b["r2"][0], r2_identity(py, px), b["r2"]

    w_small, point, (lo, hi) = width_and_point(32, 64)
    assert lo <= point <= hi and w_small > 0.01
    w_large, _, _ = width_and_point(128, 256)
    assert w_large < w_small / 1.5  # 4x the questions: a much narrower interval


def test_no_interval_without_per_question_test_records():
    runs = noisy_runs(8, 8)
    runs[0].test_matrix = None
    assert question_bootstrap(runs, -2.3, None, resamples=10) is None
