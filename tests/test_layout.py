"""The shape of the code: one package in layers under thin scripts (parsed, not imported).

- no import cycle among the project's modules (imports inside functions count too);
- library code never imports a top-level script, and a script never imports another script;
- no private `_name` of one module used from another;
- every package folder (and metric.py) sits in a layer of premem_kit/__init__.py; a module imports only
  from its own folder and from folders of lower layers;
- the metric is numpy only; no file over 600 lines.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import ROOT

PKG = "premem_kit"
SCRIPTS = ("train", "evaluate", "premem", "curate", "sweep")
MAX_LINES = 600


def project_modules(root: Path) -> dict[str, Path]:
    mods = {p.stem: p for p in root.glob("*.py")}
    for p in (root / PKG).rglob("*.py"):
        parts = p.relative_to(root).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    for p in (root / "bench").glob("*.py"):
        mods[f"bench.{p.stem}"] = p
    return mods


def imports_of(name: str, path: Path, mods: dict) -> list[tuple[str, list[str]]]:
    """(imported project module, names taken from it) for every import in the file, at any depth."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name in mods]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(p for p in [".".join(up), base] if p)
            for a in node.names:
                full = f"{base}.{a.name}"
                out.append((full, []) if full in mods else (base, [a.name]))
    return [(m, names) for m, names in out if m in mods and m != name]


def graph(root: Path):
    mods = project_modules(root)
    return mods, {m: imports_of(m, p, mods) for m, p in mods.items()}


def find_cycle(edges: dict[str, list]) -> list[str] | None:
    state, stack = {}, []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w, _ in edges[v]:
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (c := visit(w)):
                return c
        state[v] = 2
        stack.pop()
        return None

    for v in edges:
        if v not in state and (c := visit(v)):
            return c
    return None


def private_uses(root: Path, mods: dict) -> list[str]:
    found = []
    for m, p in mods.items():
        tree = ast.parse(p.read_text(encoding="utf-8"))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{m} imports {a.name}")
                    aliases[a.asname or a.name] = a.name
            elif isinstance(node, ast.Import):
                for a in node.names:
                    aliases[a.asname or a.name] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")
                    and any(aliases[node.value.id].endswith(x.rpartition(".")[2]) for x in mods)):
                found.append(f"{m} uses {node.value.id}.{node.attr}")
    return found


def declared_layers(root: Path) -> dict[str, int]:
    """{premem_kit.<folder or top-level module>: layer} from the package docstring."""
    doc = ast.get_docstring(ast.parse((root / PKG / "__init__.py").read_text()))
    layers = {}
    for line in doc.splitlines():
        m = re.match(r"^\s*(\d+)\s+((?:[a-z_0-9]+ ?)+?)(?:\s{2,}.*)?$", line)
        if m:
            for mod in m.group(2).split():
                layers[f"{PKG}.{mod}"] = int(m.group(1))
    return layers


def unit_of(module: str) -> str:
    """The layered unit a module belongs to: premem_kit.core.files -> premem_kit.core."""
    return ".".join(module.split(".")[:2])


def test_no_import_cycle():
    _, edges = graph(ROOT)
    assert find_cycle(edges) is None


def test_scripts_are_leaves():
    _, edges = graph(ROOT)
    bad = [f"{m} imports {t}" for m, ts in edges.items() for t, _ in ts if t in SCRIPTS]
    assert bad == []


def test_no_private_name_across_modules():
    mods, _ = graph(ROOT)
    assert private_uses(ROOT, mods) == []


def test_every_module_in_its_layer():
    mods, edges = graph(ROOT)
    layers = declared_layers(ROOT)
    pkg_mods = [m for m in mods if m.startswith(PKG + ".")]
    assert sorted({unit_of(m) for m in pkg_mods} - set(layers)) == [], \
        "add new folders to the layer list in premem_kit/__init__.py"
    upward = [f"{m} (layer {layers[unit_of(m)]}) imports {t} (layer {layers[unit_of(t)]})"
              for m in pkg_mods for t, _ in edges[m]
              if t.startswith(PKG + ".") and unit_of(t) != unit_of(m) and layers[unit_of(t)] >= layers[unit_of(m)]]
    assert upward == []


def test_the_metric_is_a_top_level_module():
    """The file a student reads first is not buried in a folder."""
    assert (ROOT / PKG / "metric.py").is_file() and not list((ROOT / PKG).rglob("*/metric.py"))


def test_metric_is_numpy_only():
    tree = ast.parse((ROOT / PKG / "metric.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names <= {"numpy", "math", "__future__"}


def test_files_fit_in_a_readers_head():
    mods, _ = graph(ROOT)
    long = {str(p.relative_to(ROOT)): n for p in mods.values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_the_checks_catch_what_they_claim(tmp_path):
    """The checks above on a made-up project that breaks each rule."""
    (tmp_path / PKG / "low").mkdir(parents=True)
    (tmp_path / PKG / "__init__.py").write_text('"""x\n\n    0  a low\n    1  b\n"""\n')
    (tmp_path / PKG / "a.py").write_text("def f():\n    from . import b\n    return b._hidden\n")
    (tmp_path / PKG / "b.py").write_text("from .a import f\nimport train\n_hidden = 1\n")
    (tmp_path / PKG / "low" / "__init__.py").write_text("")
    (tmp_path / PKG / "low" / "c.py").write_text("from ..b import f\nfrom premem_kit.a import f\n")
    (tmp_path / "train.py").write_text("import evaluate\n")
    (tmp_path / "evaluate.py").write_text("x = 1\n")
    mods, edges = graph(tmp_path)
    assert set(find_cycle(edges)) == {f"{PKG}.a", f"{PKG}.b"}
    assert private_uses(tmp_path, mods) == [f"{PKG}.a uses b._hidden"]
    assert ("train", []) in edges[f"{PKG}.b"] and ("evaluate", []) in edges["train"]
    assert declared_layers(tmp_path) == {f"{PKG}.a": 0, f"{PKG}.low": 0, f"{PKG}.b": 1}
    assert edges[f"{PKG}.low.c"] == [(f"{PKG}.b", ["f"]), (f"{PKG}.a", ["f"])]
    assert unit_of(f"{PKG}.low.c") == f"{PKG}.low"


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_stay_thin(script):
    """A script is a parser and a main: no class, and few functions."""
    tree = ast.parse((ROOT / f"{script}.py").read_text())
    assert not [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert len((ROOT / f"{script}.py").read_text().splitlines()) <= 350  # curate.py: six subcommands


def test_docs_record_schema_is_the_code_schema():
    from premem_kit.core import records

    text = (ROOT / "docs" / "layout.md").read_text()
    assert records.markdown_table() in text
    assert records.markdown_table(records.GREEDY_COLUMNS) in text
