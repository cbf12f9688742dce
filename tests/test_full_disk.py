"""A full disk and a read-only folder, for real (a small tmpfs mounted for the test; root only): clean
errors naming the file, nothing half-written, and the same command resumes once there is room."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import tiny_cfg
from premem_kit.core import runs


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder):
    """Fill the file system of `folder` to the last block."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_a_full_disk_and_a_read_only_folder_are_clean_errors_and_the_rerun_resumes(small_fs, tiny_model, capsys):
    import evaluate
    from premem_kit.training.trainer import run_training

    run = small_fs / "run"
    cfg = tiny_cfg(tiny_model, run, num_epochs=1, max_train_examples=4, eval_train_examples=2,
                   eval_test_examples=2, eval_max_new_tokens=4)
    run_training(cfg)
    fill(small_fs)
    assert evaluate.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "the disk is full" in err and "Traceback" not in err
    assert runs.list_records(run) == [] and not list(run.rglob("*.tmp"))
    (small_fs / "filler").unlink()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    assert evaluate.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert "the file system is read-only" in err and "Traceback" not in err
    subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    assert evaluate.main([str(run)]) == 0  # once there is room, the same command does the work
    capsys.readouterr()
    assert len(runs.list_records(run)) == 2
    shutil.rmtree(run)
