"""Records that know what they measured (issue 28): a run keeps a hash of each train example's prompt and
target, every record row carries its example's hash and every record file the settings that made it, so a
changed question, a changed setting or a missing checkpoint is noticed on a real tiny run."""
from __future__ import annotations

import logging
import shutil

import pytest

from conftest import DEMO_DATA, tiny_cfg, write_synthetic_run
from premem_kit.core import records, runs
from premem_kit.evaluation.evaluation import EvalError, EvalOptions, evaluate_run
from premem_kit.tasks import data
from premem_kit.tasks.data import DataError


@pytest.fixture(scope="module")
def run_on_own_data(tmp_path_factory, tiny_model):
    """A trained and evaluated tiny run on its own copy of the demo data (so the test may edit it)."""
    from premem_kit.training.trainer import run_training

    root = tmp_path_factory.mktemp("knows")
    shutil.copytree(DEMO_DATA, root / "data")
    cfg = tiny_cfg(tiny_model, root / "run", data=str(root / "data"), num_epochs=2, max_train_examples=4,
                   eval_train_examples=2, eval_test_examples=2, eval_max_new_tokens=4)
    run_training(cfg)
    evaluate_run(cfg.run_dir, EvalOptions(progress=False))
    return cfg


def test_rows_and_files_carry_what_they_measured(run_on_own_data):
    cfg = run_on_own_data
    run = cfg.run_dir
    hashes = runs.read_train_hashes(run)
    trained = data.run_train_examples(run, cfg)
    assert hashes == {e["id"]: data.example_hash(e) for e in trained} and len(hashes) == 4
    step, split, _, path = runs.list_records(run)[-1]
    df = records.read_records(path)
    assert df["example_hash"].notna().all()
    settings = records.read_settings(path)
    assert settings["eval_samples"] == 2 and settings["examples"] == 2 and settings["max_length"] == 512


def test_a_changed_setting_is_refused_naming_it_and_the_flag(run_on_own_data):
    run = run_on_own_data.run_dir
    before = {p: p.stat().st_mtime_ns for _, _, _, p in runs.list_records(run)}
    with pytest.raises(EvalError, match=r"eval_samples 2 \(now 3\).*--force redoes"):
        evaluate_run(run, EvalOptions(settings={"eval_samples": 3}, progress=False))
    with pytest.raises(EvalError, match=r"examples 2 \(now 3\)"):
        evaluate_run(run, EvalOptions(settings={"eval_test_examples": 3}, progress=False))
    assert {p: p.stat().st_mtime_ns for _, _, _, p in runs.list_records(run)} == before  # nothing rewritten


def test_a_deleted_checkpoint_is_noted(run_on_own_data, caplog, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(run_on_own_data.run_dir, run)
    cfg = runs.read_config(run)
    shutil.rmtree(runs.checkpoint_dir(run, 2))
    with caplog.at_level(logging.WARNING, logger="evaluate"):
        evaluate_run(run, EvalOptions(progress=False))
    assert "records of step(s) [2] are kept, but their checkpoints are gone" in caplog.text
    assert cfg.run_dir != str(run)  # a copied run folder evaluates (its config names the old folder)


def test_a_changed_question_is_refused(run_on_own_data, tmp_path):
    """Deleting the first line of train.jsonl shifts every id (ids are positions): refused, not scored."""
    folder = tmp_path / "data"
    shutil.copytree(DEMO_DATA, folder)
    run = tmp_path / "run"
    shutil.copytree(run_on_own_data.run_dir, run)
    cfg = runs.read_config(run)
    lines = (folder / "train.jsonl").read_text().splitlines(keepends=True)
    (folder / "train.jsonl").write_text("".join(lines[1:]))
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(cfg.data, str(folder)))
    with pytest.raises(DataError, match=r"are not the questions it was trained on .*changed after training"):
        evaluate_run(run, EvalOptions(force=True, progress=False))


def test_analyze_refuses_runs_of_two_tasks(tmp_path, capsys):
    import premem

    a = write_synthetic_run(tmp_path / "g", [1, 2], [[0.5], [1.0]], [[2.0], [1.5]], test_acc=[0.3, 0.4])
    b = write_synthetic_run(tmp_path / "m", [1, 2], [[0.5], [1.0]], [[2.0], [1.5]], test_acc=[0.3, 0.4],
                            config={"task": "math"})
    assert premem.main(["analyze", str(a), str(b), "--out", str(tmp_path / "out"), "--threshold", "-2.3"]) == 2
    err = capsys.readouterr().err
    assert "the runs are of 2 tasks (gsm8k: g; math: m)" in err and not (tmp_path / "out").exists()
