"""sweep.py and the grid files: the paper's grids cell for cell, run naming, clear errors on bad grids,
the one-cell-per-GPU scheduler, a real grid on the tiny model that is killed and resumed, and 2-process
data-parallel training (accelerate launch, gloo on CPU) against 1 process with the same effective batch."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, tiny_cfg
from premem_kit.core import config
from premem_kit.core import files
from premem_kit.core import runs
from premem_kit.grids.grid import GridError, cell_name, fmt_epochs, fmt_lr, grid_status, load_grid, model_short_name
from premem_kit.grids.grid_run import run_grid, schedule

# --------------------------------------------------------------------------------------------------
# the grid files

# (epochs, size, learning rate) of the 13 GSM8K / Llama3-8B runs (see grids/gsm8k_llama3-8b.yaml for the
# source); the first 7 are the authors' published run folders.
GSM8K_LLAMA = [(1, "full", 5e-7), (1, "full", 5e-5), (1, "full", 2e-4),
               (3, "full", 5e-7), (3, "full", 2e-5), (3, "full", 5e-5), (3, "full", 2e-4),
               (6, "full", 5e-7), (6, "full", 2e-5), (6, "full", 5e-5), (6, "full", 2e-4),
               (6, "half", 2e-5), (12, "quarter", 2e-5)]
# the 11 MATH / Llama3-8B runs of the authors' code release (math_analyze.ipynb)
MATH_LLAMA = [(1, "full", 5e-7), (1, "full", 5e-5), (1, "full", 2e-4),
              (3, "full", 5e-7), (3, "full", 5e-5), (3, "full", 2e-4),
              (6, "full", 5e-7), (6, "full", 5e-5), (6, "full", 2e-4),
              (6, "half", 2e-5), (12, "quarter", 2e-5)]
# the 14 Gemma2-9B runs (GSM8K and MATH alike): lr {5e-7, 5e-6, 5e-5, 5e-4} x epochs {1, 3, 6} on the full
# data, then half and quarter (lr and epochs inferred; see the grid files)
GEMMA2 = [(e, "full", lr) for e in (1, 3, 6) for lr in (5e-7, 5e-6, 5e-5, 5e-4)] + \
    [(6, "half", 5e-5), (12, "quarter", 5e-5)]
RECIPE_A = dict(lr_scheduler="linear", warmup_steps=20, warmup_ratio=0.0, max_grad_norm=2.0, weight_decay=0.01)
RECIPE_A_MATH = dict(RECIPE_A, weight_decay=0.0)  # the authors' math_train.py sets no weight decay
RECIPE_B = dict(lr_scheduler="cosine", warmup_ratio=0.1, max_grad_norm=1.0, batch_size=32, weight_decay=0.0)
# the paper's grids run the authors' regime: full finetuning, fp32 master weights, paged 8-bit AdamW; bf16
# autocast, fp16 for Llama3 on GSM8K (the authors' gsm8k_train.py)
FULL_FT = dict(lora_r=0, quantization="none", dtype="fp32", mixed_precision="bf16", optimizer="paged_adamw_8bit",
               gradient_checkpointing=True)
FULL_FT_GSM8K_LLAMA = dict(FULL_FT, mixed_precision="fp16")


def cells_of(grid):
    return [(c["cfg"].num_epochs, c["cfg"].subset, c["cfg"].learning_rate) for c in grid["cells"]]


def test_every_grid_file_loads_and_names_are_unique():
    files = sorted((ROOT / "grids").glob("*.yaml"))
    assert {p.stem for p in files} >= {"gsm8k_llama3-8b", "math_llama3-8b", "gsm8k_gemma2-9b", "math_gemma2-9b",
                                        "curation_deepseekmath-7b", "demo_cpu"}
    for p in files:
        g = load_grid(p)
        names = [c["name"] for c in g["cells"]]
        assert len(set(names)) == len(names)
        for c in g["cells"]:
            config.validate(c["cfg"])
            assert Path(c["cfg"].run_dir).name == c["name"]


def test_gsm8k_llama3_grid_matches_the_appendix_cells_and_recipe():
    g = load_grid("gsm8k_llama3-8b")
    assert cells_of(g) == GSM8K_LLAMA
    for c in g["cells"]:
        cfg = c["cfg"]
        assert {k: getattr(cfg, k) for k in RECIPE_A} == RECIPE_A
        assert {k: getattr(cfg, k) for k in FULL_FT} == FULL_FT_GSM8K_LLAMA
        assert cfg.batch_size == 128 and cfg.task == "gsm8k" and cfg.model == "meta-llama/Meta-Llama-3-8B"
        # half and quarter runs keep the optimizer steps of 3 full epochs
        frac = {"full": 1, "half": 0.5, "quarter": 0.25}[cfg.subset]
        assert cfg.num_epochs * frac in (1, 3, 6)
    assert [c["name"] for c in g["cells"]][:3] == ["gsm8k_llama3-8b_1ep_full_lr5e-7", "gsm8k_llama3-8b_1ep_full_lr5e-5",
                                                   "gsm8k_llama3-8b_1ep_full_lr2e-4"]


def test_published_runs_are_cells_of_the_gsm8k_grid(published_ckpts):
    ckpts = published_ckpts
    cells = set(cells_of(load_grid("gsm8k_llama3-8b")))
    names = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("gsm8k_orig_"))
    assert names
    for n in names:  # gsm8k_orig_<E>epochs_<size>_lr<LR>_bs<B>
        parts = n.split("_")
        e, size, lr, bs = int(parts[2].removesuffix("epochs")), parts[3], float(parts[4][2:]), int(parts[5][2:])
        assert (e, size, lr) in cells and bs == 128, n


def test_math_llama3_grid_matches_the_release_cells_and_recipe():
    g = load_grid("math_llama3-8b")
    assert cells_of(g) == MATH_LLAMA and len(MATH_LLAMA) == 11
    for c in g["cells"]:
        cfg = c["cfg"]
        assert {k: getattr(cfg, k) for k in RECIPE_A_MATH} == RECIPE_A_MATH and cfg.batch_size == 24
        assert cfg.task == "math" and cfg.max_length == 1024
        assert {k: getattr(cfg, k) for k in FULL_FT} == FULL_FT and cfg.eval_top_p == 1.0


@pytest.mark.parametrize("task", ["gsm8k", "math"])
def test_gemma2_grids_have_the_14_cells_and_recipe_b(task):
    g = load_grid(f"{task}_gemma2-9b")
    assert cells_of(g) == GEMMA2 and len(GEMMA2) == 14
    for c in g["cells"]:
        cfg = c["cfg"]
        assert {k: getattr(cfg, k) for k in RECIPE_B} == RECIPE_B and cfg.model == "google/gemma-2-9b"
        assert cfg.task == task and {k: getattr(cfg, k) for k in FULL_FT} == FULL_FT
    # the two cells whose lr and epochs are read off the plot say so
    assert [c["name"] for c in g["cells"] if c["note"]] == [f"{task}_gemma2-9b_6ep_half_lr5e-5",
                                                           f"{task}_gemma2-9b_12ep_quarter_lr5e-5"]


@pytest.mark.parametrize("paper", ["gsm8k_llama3-8b", "math_llama3-8b", "gsm8k_gemma2-9b", "math_gemma2-9b"])
def test_qlora_grids_are_the_paper_cells_with_ten_times_the_learning_rate(paper):
    full, q = load_grid(paper), load_grid(f"{paper}-qlora")
    assert [(e, s, pytest.approx(lr * 10)) for e, s, lr in cells_of(full)] == cells_of(q)
    recipe = (RECIPE_A_MATH if paper.startswith("math") else RECIPE_A) if "llama3" in paper else RECIPE_B
    for c in q["cells"]:
        cfg = c["cfg"]
        assert cfg.quantization == "4bit" and cfg.lora_r == 16 and cfg.optimizer in ("adamw", "adam")
        assert {k: getattr(cfg, k) for k in recipe} == recipe and "-qlora_" in c["name"]
    assert "NOT THE PAPER'S NUMBERS" in q["path"].read_text()
    assert not {c["name"] for c in q["cells"]} & {c["name"] for c in full["cells"]}


def test_a_grid_without_cells_is_refused_with_its_notes(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("base: configs/demo.yaml\nnotes: table X not filled in\ncells: []\n")
    with pytest.raises(GridError, match="has no cells.*table X not filled in"):
        run_grid(load_grid(p))


def test_curation_grid_is_the_appendix_c_recipe():
    (c,) = load_grid("curation_deepseekmath-7b")["cells"]
    cfg = c["cfg"]
    # the appendix's lr 2e-5 x10: the recipe trains QLoRA (the kit's rule, tests/test_recipes.py)
    assert cfg.math_levels == [1, 2, 3] and cfg.learning_rate == 2e-4 and cfg.num_epochs == 3
    assert cfg.batch_size == 128 and cfg.max_grad_norm == 2.0 and cfg.lr_scheduler == "linear"
    assert cfg.quantization == "4bit" and cfg.max_length == 1024
    assert c["name"] == "math-l123_deepseekmath-7b_3ep_full_lr2e-4"


def test_run_names():
    assert [fmt_lr(x) for x in (2e-5, 0.0002, 5e-7, 1.5e-4, 1e-3, 3.0)] == \
        ["2e-5", "2e-4", "5e-7", "1.5e-4", "1e-3", "3e0"]
    assert fmt_epochs(3) == "3" and fmt_epochs(1.5) == "1.5"
    assert model_short_name("meta-llama/Meta-Llama-3-8B") == "meta-llama-3-8b"
    assert model_short_name("pypi:smollm2-135m-instruct") == "smollm2-135m-instruct"
    cfg = config.Config(num_epochs=12, subset="quarter", learning_rate=2e-5)
    assert cell_name(cfg, "llama3-8b") == "gsm8k_llama3-8b_12ep_quarter_lr2e-5"
    cfg.subset_fraction = "1/32"
    assert cell_name(cfg, "m", {"subset_fraction": "1/32"}) == "gsm8k_m_12ep_quarter-1of32_lr2e-5"


def write_grid(tmp_path, text, name="g.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_bad_grid_files_give_errors_that_name_file_line_and_key(tmp_path):
    base = "base: configs/demo.yaml\n"
    p = write_grid(tmp_path, base + "cells:\n  - {num_epochs: 1}\n  - {num_epoch: 2}\n")
    with pytest.raises(GridError, match=r"g\.yaml line 4 \(cell 2\).*unknown config key 'num_epoch'; "
                                              r"did you mean 'num_epochs'"):
        load_grid(p)
    p = write_grid(tmp_path, base + "cells:\n  - {learning_rate: fast}\n")
    with pytest.raises(GridError, match=r"line 3 \(cell 1\).*'learning_rate' expects a number, got 'fast'"):
        load_grid(p)
    p = write_grid(tmp_path, base + "cells:\n  - {num_epochs: 1}\n  - {num_epochs: 1}\n")
    with pytest.raises(GridError, match="cell name .*_1ep_full_lr1e-3 is the same as cell 1's"):
        load_grid(p)
    p = write_grid(tmp_path, base + "cellz: []\ncells: []\n")
    with pytest.raises(GridError, match="unknown grid key 'cellz'"):
        load_grid(p)
    p = write_grid(tmp_path, "base: configs/nope.yaml\ncells: []\n")
    with pytest.raises(GridError, match="base config configs/nope.yaml does not exist"):
        load_grid(p)
    p = write_grid(tmp_path, base + "cells:\n  - {run_dir: x}\n")
    with pytest.raises(GridError, match="'run_dir' is set by the sweep"):
        load_grid(p)
    p = write_grid(tmp_path, base + "cells:\n  - [1, 2]\n")
    with pytest.raises(GridError, match="a cell must be a mapping"):
        load_grid(p)
    with pytest.raises(GridError, match="does not exist.*demo_cpu"):
        load_grid("no_such_grid")
    r = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "status", str(tmp_path / "g.yaml")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("sweep.py: error: ") and "a cell must be a mapping" in r.stderr


def test_cell_names_must_be_plain_folder_names(tmp_path):
    """A cell name is a folder under runs_root: nothing that leaves it or lands on the sweep's own folders."""
    base = "base: configs/demo.yaml\n"
    for bad in ("../x", "/abs", "a/b", "..", "''", "_sweep", "analysis"):
        p = write_grid(tmp_path, base + f"cells:\n  - {{num_epochs: 1}}\n  - {{name: {bad}, num_epochs: 2}}\n")
        shown = bad.strip("'")
        with pytest.raises(GridError, match=rf"g\.yaml line 4 \(cell 2\): cell name '{re.escape(shown)}' is not a "
                                            r"plain folder name"):
            load_grid(p)
    p = write_grid(tmp_path, base + "cells:\n  - {name: , num_epochs: 1}\n")
    with pytest.raises(GridError, match=r"line 3 \(cell 1\): cell name '' is not a plain folder name \(it is empty\)"):
        load_grid(p)
    # a generated name is checked too: model_name goes into it
    p = write_grid(tmp_path, base + "model_name: ../up\ncells:\n  - {num_epochs: 1}\n")
    with pytest.raises(GridError, match=r"line 4 \(cell 1\): cell name 'gsm8k_\.\./up_1ep.*not a plain folder"):
        load_grid(p)
    p = write_grid(tmp_path, base + f"runs_root: {tmp_path / 'r'}\ncells:\n  - {{name: my-cell.v2, num_epochs: 1}}\n")
    (c,) = load_grid(p)["cells"]
    assert c["name"] == "my-cell.v2" and c["run_dir"] == tmp_path / "r" / "my-cell.v2"
    # the command line says so too, with exit status 2
    p = write_grid(tmp_path, base + "cells:\n  - {name: /abs, num_epochs: 1}\n")
    r = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "show", str(p)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("sweep.py: error: ") and "cell name '/abs'" in r.stderr


def test_a_second_sweep_on_the_same_runs_root_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    g = write_grid(tmp_path, f"base: configs/demo.yaml\nruns_root: {root}\ncells:\n  - {{num_epochs: 1}}\n")
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_LOG", str(calls))
    grid = load_grid(g)
    with files.FileLock(root / "_sweep" / "lock", "a test holding the sweep lock"):
        with pytest.raises(files.LockedError, match=rf"the sweep folder {re.escape(str(root))} is in use by pid {os.getpid()}"):
            run_grid(grid, launcher=[sys.executable, str(fake)], analyze=False, say=lambda m: None)
        r = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "run", str(g), "--no-analyze",
                            "--launcher", f"{sys.executable} {fake}"], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "FAKE_LOG": str(calls)})
        assert r.returncode == 2 and r.stderr.startswith("sweep.py: error: ") and str(root) in r.stderr, r.stderr
        assert "to run" not in r.stdout
    assert not calls.exists() and not (root / "_sweep" / "cells").exists()
    assert not (root / "_sweep" / "timings.jsonl").exists()
    # once the lock is free the same call runs the cell (train.py and evaluate.py through the stand-in)
    assert run_grid(grid, launcher=[sys.executable, str(fake)], analyze=False, say=lambda m: None) == 1
    assert len(calls.read_text().splitlines()) == 2


# --------------------------------------------------------------------------------------------------
# one cell per GPU

def test_schedule_runs_at_most_one_item_per_slot():
    active, log, lock = {}, [], threading.Lock()
    peak = [0]

    def work(item, slot):
        with lock:
            assert slot not in active, f"slot {slot} given two items at once"
            active[slot] = item
            peak[0] = max(peak[0], len(active))
        time.sleep(0.02 + 0.01 * (item % 3))
        with lock:
            del active[slot]
            log.append((item, slot))
        return item * 10

    res = schedule(list(range(9)), ["0", "1", "2"], work)
    assert res == {i: i * 10 for i in range(9)}
    assert sorted(i for i, _ in log) == list(range(9)) and peak[0] == 3
    assert {s for _, s in log} == {"0", "1", "2"}
    res = schedule([1, 2], [None], work)  # one slot: one after another
    assert res == {0: 10, 1: 20}


FAKE = """import json, os, sys, time
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                        "t0": time.time()}) + "\\n")
time.sleep(0.3)
"""


def test_one_cell_per_gpu_sets_cuda_visible_devices(tmp_path, monkeypatch, tiny_model):
    """The real run path with a stand-in launcher that records what it was asked to run and where."""
    base = tmp_path / "base.yaml"
    base.write_text(config.dump(tiny_cfg(tiny_model, tmp_path / "unused")))
    g = write_grid(tmp_path, f"base: {base}\nruns_root: {tmp_path / 'runs'}\ncells:\n"
                   + "".join(f"  - {{learning_rate: {lr}}}\n" for lr in (1e-3, 2e-3, 3e-3, 4e-3)))
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    rc = run_grid(load_grid(g), gpus=["0", "1"], launcher=[sys.executable, str(fake)], analyze=False,
                        say=lambda m: None)
    assert rc == 1  # the stand-in writes no records, so no cell ends up done
    calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 8  # train.py then evaluate.py for each of the 4 cells
    assert {c["gpu"] for c in calls} == {"0", "1"}
    trains = [c for c in calls if c["argv"][0].endswith("train.py")]
    assert sorted(Path(c["argv"][1]).stem for c in trains) == sorted(c["name"] for c in load_grid(g)["cells"])
    # two cells ran at the same time: the first two train calls start before either cell's evaluate call
    first_eval = min(c["t0"] for c in calls if c["argv"][0].endswith("evaluate.py"))
    assert sorted(c["t0"] for c in trains)[1] < first_eval
    timings = [json.loads(x) for x in (tmp_path / "runs" / "_sweep" / "timings.jsonl").read_text().splitlines()]
    assert len(timings) == 4 and {t["slot"] for t in timings} == {"0", "1"}


# --------------------------------------------------------------------------------------------------
# a real grid on the tiny model: run, status, kill, resume, skip

def _procs_with(text: str) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if text in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def test_sweep_kill_resume_skip_and_analysis(tmp_path, tiny_model):
    base = tmp_path / "base.yaml"
    base.write_text(config.dump(tiny_cfg(tiny_model, tmp_path / "unused", eval_base_model=True, eval_train_examples=4,
                                            eval_test_examples=2, eval_max_new_tokens=8)))
    root = tmp_path / "runs"
    # cell 2 takes 4 epochs x 4 steps with micro-batches of 1: long enough to be killed mid-training
    g = write_grid(tmp_path, f"base: {base}\nmodel_name: tiny\nruns_root: {root}\n"
                   "analyze_args: [--threshold, '5.0']\ncells:\n"
                   "  - {num_epochs: 1, learning_rate: 1.0e-3}\n"
                   "  - {num_epochs: 4, learning_rate: 2.0e-3, micro_batch_size: 1}\n")
    grid = load_grid(g)
    c1, c2 = grid["cells"]
    assert (c1["name"], c2["name"]) == ("gsm8k_tiny_1ep_full_lr1e-3", "gsm8k_tiny_4ep_full_lr2e-3")
    assert [r["state"] for r in grid_status(grid)] == ["pending", "pending"]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "sweep.py"), "run", str(g)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run2 = root / c2["name"]
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        log = run2 / "log.jsonl"
        if (run2 / "checkpoint-4" / runs.COMPLETE).exists() and log.exists() and \
                any(json.loads(x)["step"] >= 5 for x in log.read_text().splitlines() if x.strip()):
            proc.send_signal(signal.SIGKILL)  # the sweep process only: its train.py child must die with it
            break
        time.sleep(0.005)
    out = proc.communicate()[0]
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed:\n" + out
    time.sleep(1.0)
    assert not _procs_with(str(root)), "a child of the killed sweep is still running"

    rows = {r["cell"]: r for r in grid_status(grid)}
    assert rows[c1["name"]]["state"] == "done" and rows[c1["name"]]["records"] == 4  # steps 0, 4 x train, test
    assert rows[c2["name"]]["state"] == "partial" and not rows[c2["name"]]["trained"]
    r = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "status", str(g)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0 and "done 1, partial 1, pending 0" in r.stdout
    assert f"{c2['name']}  partial  no" in r.stdout

    kept = {p: p.stat().st_mtime_ns for p in [*(root / c1["name"]).rglob("*.parquet"),
                                                 run2 / "checkpoint-4" / "adapter_model.safetensors"]}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "1 done, 1 to run" in r.stdout and "resuming, 1 checkpoints done" in r.stdout
    assert all(p.stat().st_mtime_ns == m for p, m in kept.items())  # done work was not redone
    summary = json.loads((run2 / "train_summary.json").read_text())
    assert summary["optimizer_steps"] == 16
    steps = [json.loads(x)["step"] for x in (run2 / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17))
    assert [r["state"] for r in grid_status(grid)] == ["done", "done"]
    assert (root / "analysis" / "summary.json").exists() and (root / "analysis" / "figures" / "fig4.png").exists()
    timings = [json.loads(x) for x in (root / "_sweep" / "timings.jsonl").read_text().splitlines()]
    assert [t["cell"] for t in timings] == [c1["name"], c2["name"]] and all(t["ok"] for t in timings)

    # a third run has nothing to do
    r = subprocess.run(cmd + ["--no-analyze"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200)
    assert r.returncode == 0 and "2 done, 0 to run" in r.stdout


# --------------------------------------------------------------------------------------------------
# several processes: data parallel training

def test_two_process_training_gives_the_one_process_loss_curve(tmp_path, tiny_model):
    """Effective batch 4 both ways: 1 process x micro-batch 2 x 2 accumulation steps, and 2 processes
    (accelerate launch, gloo on CPU) x micro-batch 2 x 1 step. Same data order, same loss curve."""
    from safetensors.torch import load_file
    import torch

    from premem_kit.training.trainer import run_training

    common = dict(num_epochs=2, batch_size=4, micro_batch_size=2, lora_dropout=0.0)
    one = tiny_cfg(tiny_model, tmp_path / "one", **common)
    run_training(one)
    two = tiny_cfg(tiny_model, tmp_path / "two", **common)
    path = tmp_path / "two.yaml"
    path.write_text(config.dump(two))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "train.py"), str(path)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    s2 = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert s2["processes"] == 2 and s2["optimizer_steps"] == 8
    l1 = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    l2 = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in l2] == [x["step"] for x in l1] == list(range(1, 9))  # process 0 logs, once
    assert [x["loss"] for x in l2] == pytest.approx([x["loss"] for x in l1], rel=1e-4)
    assert [x["learning_rate"] for x in l2] == pytest.approx([x["learning_rate"] for x in l1])
    a = load_file(str(tmp_path / "one" / "checkpoint-8" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoint-8" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)


def test_a_grid_file_with_evaluate_args_names_the_keys_to_set_instead(tmp_path):
    p = write_grid(tmp_path, "base: configs/demo.yaml\ncells: [{num_epochs: 1}]\n"
                             "evaluate_args: [--train-examples, '8', --test-examples, '32', --no-base]\n")
    with pytest.raises(GridError, match=r"'evaluate_args' is gone.*here: eval_train_examples: 8, "
                                        r"eval_test_examples: 32, eval_base_model: false"):
        load_grid(p)


def test_evaluation_keys_of_a_grid_reach_evaluate_py_and_status(tmp_path):
    from premem_kit.grids.grid_run import eval_overrides

    p = write_grid(tmp_path, f"base: configs/demo.yaml\nruns_root: {tmp_path / 'r'}\ncommon: {{eval_test_examples: 32}}\n"
                             "cells:\n  - {num_epochs: 1, eval_splits: [test]}\n  - {num_epochs: 2}\n")
    g = load_grid(p)
    a, b = g["cells"]
    assert eval_overrides(g, a) == ["eval_test_examples=32", 'eval_splits=["test"]']
    assert eval_overrides(g, b) == ["eval_test_examples=32"]
    # evaluate.py reads these words as the same checked settings
    import evaluate
    from premem_kit.core import overrides

    ns, _ = overrides.parse(evaluate.build_parser(), ["run", *eval_overrides(g, a)], config.EVAL_KEYS)
    assert overrides.collect(ns, ns.overrides, config.EVAL_KEYS) == {"eval_test_examples": 32, "eval_splits": ["test"]}
    # the grid's status expects the records of the cell's own splits
    run = Path(a["run_dir"])
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "checkpoint-4" / ".complete").write_text("{}")
    from premem_kit.grids.grid import expected_records

    assert [x.name for x in expected_records(a["cfg"], run)] == ["step-000004.test.original.parquet"]


def test_status_compares_each_cell_with_its_run_folder(tmp_path, tiny_model):
    """A grid file edited after its cells ran: the status says which settings differ, and the cell is not
    done, so `run` does not pass it over (train.py then refuses the other config by name)."""
    base = tmp_path / "base.yaml"
    base.write_text(config.dump(tiny_cfg(tiny_model, tmp_path / "unused", num_epochs=1, max_train_examples=4,
                                         eval_train_examples=2, eval_test_examples=2, eval_max_new_tokens=4)))
    text = f"base: {base}\nmodel_name: tiny\nruns_root: {tmp_path / 'runs'}\ncells:\n  - {{learning_rate: 1.0e-3}}\n"
    g = write_grid(tmp_path, text)
    assert run_grid(load_grid(g), analyze=False, say=lambda m: None) == 0
    assert [r["state"] for r in grid_status(load_grid(g))] == ["done"]
    g.write_text(text.replace("cells:", "common: {warmup_steps: 3, eval_samples: 3}\ncells:"))
    (row,) = grid_status(load_grid(g))
    assert row["state"] == "changed" and row["changed"] == ["warmup_steps", "eval_samples (records)"]
