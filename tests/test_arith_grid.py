"""grids/arith_smollm2{,_large}.yaml, the kit's own small-model replication: the README describes each grid
it ships (the sentence is rebuilt from the grid file), the calibration runs are half the cells, and the
grid's settings on data/arith go through sweep.py -> train -> evaluate -> analyze on the tiny model."""
import fnmatch
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, tiny_cfg
from premem_kit.tasks import data
from premem_kit.core import records
from premem_kit.core import runs
from premem_kit.core import config
from premem_kit.grids.grid import flag_values, fmt_epochs, fmt_lr, load_grid

GRID = ROOT / "grids" / "arith_smollm2.yaml"
LARGE = ROOT / "grids" / "arith_smollm2_large.yaml"
POWERED = ROOT / "grids" / "arith_smollm2_powered.yaml"
# each grid, with the start of its README sentence (so a change of the grid file is a change here too)
GRIDS = {GRID: "8 runs: learning rates 3e-4, 1e-3, 3e-3; 1 to 8 epochs; 32 / 16 / 8 train examples",
         LARGE: "8 runs: learning rates 3e-4, 1e-3, 3e-3; 1 to 8 epochs; 256 / 128 / 64 train examples",
         POWERED: "8 runs: learning rates 3e-4, 1e-3, 3e-3; 1 to 6 epochs; 128 / 64 / 32 train examples"}


def readme_sentence(g: dict) -> str:
    """What the README must say about the grid, built from the grid file itself."""
    cfgs = [c["cfg"] for c in g["cells"]]
    lrs = ", ".join(fmt_lr(x) for x in sorted({c.learning_rate for c in cfgs}))
    epochs = sorted({c.num_epochs for c in cfgs})
    sizes = {c.subset: len(data.train_examples(c)) for c in cfgs}
    order = [s for s in ("full", "half", "quarter") if s in sizes]
    n_train, n_test = cfgs[0].eval_train_examples, cfgs[0].eval_test_examples
    cal = flag_values(g["analyze_args"], "--calibrate-on", [])
    if cfgs[0].samples_for("test") == cfgs[0].eval_samples:
        evaluated = f"{n_train} train and {n_test} test questions, {cfgs[0].eval_samples} samples each"
    else:
        evaluated = (f"{n_train} train questions (all of a run's when it has fewer) x {cfgs[0].eval_samples} "
                     f"samples and {n_test} test questions x {cfgs[0].samples_for('test')}")
    return (f"{len(cfgs)} runs: learning rates {lrs}; {fmt_epochs(epochs[0])} to {fmt_epochs(epochs[-1])} epochs; "
            f"{' / '.join(str(sizes[s]) for s in order)} train examples ({' / '.join(order)}); every epoch "
            f"evaluated on {evaluated}; threshold calibrated on {len(cal)} runs, "
            f"R² reported on the other {len(cfgs) - len(cal)}")


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.stem)
def test_the_readme_states_the_grid_that_ships(grid):
    """The grid the README runs is described there; the earlier grids in their results folders."""
    g = load_grid(grid)
    where = ROOT / "README.md" if grid == POWERED else ROOT / "docs" / "results" / grid.stem / "README.md"
    text = re.sub(r"\s+", " ", where.read_text())
    sentence = readme_sentence(g)
    assert sentence.startswith(GRIDS[grid])
    assert sentence in text, f"{where} should say: {sentence}"
    assert f"sweep.py run grids/{grid.name}" in text


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.stem)
def test_calibration_runs_are_half_the_cells_and_span_the_regimes(grid):
    g = load_grid(grid)
    names = [c["name"] for c in g["cells"]]
    pats = flag_values(g["analyze_args"], "--calibrate-on", [])
    hits = [[n for n in names if fnmatch.fnmatch(n, p)] for p in pats]
    assert all(len(h) == 1 for h in hits), hits  # each pattern names exactly one cell
    cal = {h[0] for h in hits}
    assert len(cal) * 2 == len(names)
    # both sides hold a 1-epoch run and a run of 4 or more epochs
    for side in (cal, set(names) - cal):
        eps = {c["cfg"].num_epochs for c in g["cells"] if c["name"] in side}
        assert min(eps) == 1 and max(eps) >= 4, (side, eps)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda p: p.stem)
def test_subsets_are_nested_prefixes_of_the_arith_train_split(grid):
    g = load_grid(grid)
    by_size = {c["cfg"].subset: [e["id"] for e in data.train_examples(c["cfg"])] for c in g["cells"]}
    full = by_size["full"]
    assert len(full) == 2 * len(by_size["half"]) == 4 * len(by_size["quarter"])
    assert full[:len(full) // 2] == by_size["half"] and full[:len(full) // 4] == by_size["quarter"]
    assert all(c["cfg"].data == "data/arith" for c in g["cells"])


def test_the_grid_runs_through_sweep_and_analyze_on_the_tiny_model(tmp_path, tiny_model):
    """The shipped grid's common keys (evaluation keys included), two of its cells (1 and 4 epochs), data/arith,
    with the tiny model as base; a fixed threshold, as a random model's test accuracy cannot calibrate."""
    g = yaml.safe_load(GRID.read_text())
    base = tmp_path / "base.yaml"
    base.write_text(config.dump(tiny_cfg(tiny_model, tmp_path / "unused", data=str(ROOT / "data" / "arith"),
                                         max_length=256, eval_max_new_tokens=8)))
    cells = [next(c for c in g["cells"] if (c["num_epochs"], c["subset"]) == key) for key in ((1, "full"), (4, "quarter"))]
    g.update(base=str(base), runs_root=str(tmp_path / "runs"), cells=cells,
             analyze_args=["--threshold", "-2.3"], model_name="tiny")
    grid_file = tmp_path / "tiny_arith.yaml"
    grid_file.write_text(yaml.safe_dump(g))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "run", str(grid_file)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    loaded = load_grid(grid_file)
    for c in loaded["cells"]:
        run = c["run_dir"]
        n_train = {"full": 32, "quarter": 8}[c["cfg"].subset]
        assert len(json.loads((run / "subset_ids.json").read_text())) == n_train
        files = runs.list_records(run)
        steps = sorted({step for step, _, _, _ in files})
        assert len(steps) == c["cfg"].num_epochs  # every epoch, no base model (eval_base_model: false)
        assert sorted((split, variant) for _, split, variant, _ in files) == \
            sorted([("test", "original"), ("train", "original")] * len(steps))
        for _, split, _, path in files:
            recs = records.read_records(path)
            assert len(recs) == {"train": 8, "test": 12}[split] and all(len(s) == 2 for s in recs["samples"])
    summary = json.loads((tmp_path / "runs" / "analysis" / "summary.json").read_text())
    # Figure 4's points: the full run's one checkpoint, the 4-epoch quarter run's at epochs 1, 3 and 4 (the
    # checkpoints nearest 1/3, 2/3 and all of its training, as the authors plot quarter runs)
    assert summary["n_points"] == 1 + 3 and summary["threshold_loglog"] == -2.3
    assert [p["epoch"] for p in summary["points"] if p["subset"] == "quarter"] == [1.0, 3.0, 4.0]
    assert (tmp_path / "runs" / "analysis" / "figures" / "fig1.png").exists()


def test_the_readme_reports_the_powered_grids_committed_result():
    """The README's headline numbers are the ones in the grid's committed summary (so a rerun that changes
    them changes the README too)."""
    s = json.loads((ROOT / "docs" / "results" / POWERED.stem / "summary.json").read_text())
    lo, hi = s["bootstrap"]["r2_heldout"]
    tlo, thi = s["bootstrap"]["train_acc_r2_heldout"]
    text = re.sub(r"\s+", " ", (ROOT / "README.md").read_text())
    for claim in (f"held-out R² is {s['r2_heldout']:.2f}, 95% interval [{lo:.2f}, {hi:.2f}]",
                  f"log(log(ppl)) = {s['threshold_loglog']:.2f} (perplexity {s['threshold_ppl']:.2f})",
                  f"raw train accuracy gives R² {s['train_acc_r2_heldout']:.2f} [{tlo:.1f}, {thi:.2f}]",
                  f"over the {s['n_points']} points"):
        assert claim in text, claim
