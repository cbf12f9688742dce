"""pyproject.toml: `pip install .` makes premem_kit importable outside the repository, with every
subpackage, and the scripts stay at the repository's top."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


def test_pip_install_makes_the_package_importable_anywhere(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ and *.egg-info there
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "premem_kit", src / "premem_kit", ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                        "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    code = ("import premem_kit, premem_kit.metric, premem_kit.core.records, premem_kit.training.callbacks, "
            "premem_kit.grids.grid; print(premem_kit.__file__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(site / "premem_kit" / "__init__.py")
    installed = {p.relative_to(site / "premem_kit") for p in (site / "premem_kit").rglob("*.py")}
    assert installed == {p.relative_to(ROOT / "premem_kit") for p in (ROOT / "premem_kit").rglob("*.py")}
    assert not (site / "train.py").exists()  # the scripts are run from the checkout
