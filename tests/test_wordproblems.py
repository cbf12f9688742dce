"""premem_kit/tasks/wordproblems.py and the committed data/arith: determinism, arithmetic, split, variety.

Everything here runs in a few seconds (no model, no tokenizer).
"""
from __future__ import annotations

import ast
import json
import operator
import random
import re
from collections import Counter, defaultdict
from fractions import Fraction

import pytest

from conftest import ROOT
from premem_kit.tasks import wordproblems as wp
from premem_kit.tasks.data import load_split
from premem_kit.tasks.grading import gsm8k_reference
from premem_kit.core.config import DataSettings

DATA = ROOT / "data" / "arith"
ANN = re.compile(r"<<([^=<>]+)=([^<>]+)>>(\S+)")
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def rows(split: str) -> list[dict]:
    return [json.loads(x) for x in (DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def value(expr: str) -> Fraction:
    """Exact value of plain integer arithmetic (+ - * / and parentheses), no eval."""
    def ev(n):
        if isinstance(n, ast.BinOp) and type(n.op) in OPS:
            return OPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return Fraction(n.value)
        raise ValueError(f"not plain arithmetic: {expr}")
    return ev(ast.parse(expr, mode="eval").body)


NAMES = sorted([n for n, _ in wp.PEOPLE] + wp.ITEMS + wp.THINGS + wp.HOLDERS + wp.CREWS + wp.JOBS
               + [m for m, _ in wp.MOVES] + ["km", "miles", "he", "she", "his", "her"], key=len, reverse=True)
WORDS = re.compile(r"\b(" + "|".join(map(re.escape, NAMES)) + r")\b", re.IGNORECASE)


def skeleton(text: str) -> str:
    """Text with numbers and the slot words (names, objects, pronouns) replaced: the phrasing itself."""
    return re.sub(r"\d+", "#", WORDS.sub("X", text))


@pytest.fixture(scope="module")
def committed():
    return {s: rows(s) for s in ("train", "test")}


# ---------------------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_and_committed_files_are_a_fresh_generation(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    wp.write(a)
    wp.write(b)
    for name in ("train.jsonl", "test.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() == (DATA / name).read_bytes(), \
            f"data/arith/{name} differs from `python -m premem_kit.tasks.wordproblems --out data/arith`"
    assert wp.generate(seed=1, n_train=20, n_test=10) != wp.generate(seed=0, n_train=20, n_test=10)


def test_command_line_writes_the_files_and_says_so(tmp_path, capsys):
    wp.main(["--out", str(tmp_path), "--train", "12", "--test", "6", "--max-steps", "2", "--seed", "3"])
    out = capsys.readouterr().out
    assert "train.jsonl: 12 examples" in out and "test.jsonl: 6 examples" in out
    assert all(r["steps"] <= 2 for r in map(json.loads, (tmp_path / "train.jsonl").read_text().splitlines()))


def test_knobs_out_of_range_are_refused():
    for bad in (wp.Knobs(max_steps=5), wp.Knobs(max_steps=0), wp.Knobs(max_count=2), wp.Knobs(max_extra=3)):
        with pytest.raises(ValueError, match="knobs out of range"):
            wp.generate(n_train=4, n_test=2, knobs=bad)


def test_sizes_and_schema(committed):
    assert len(committed["train"]) == wp.N_TRAIN == 512 and len(committed["test"]) == wp.N_TEST == 256
    for split, rs in committed.items():
        for r in rs:
            assert set(r) == {"question", "answer", "family", "steps"}
            assert r["family"] in wp.FAMILIES and 1 <= r["steps"] <= 4
        assert set(Counter(r["family"] for r in rs)) == set(wp.FAMILIES)
        assert set(Counter(r["steps"] for r in rs)) == {1, 2, 3, 4}


# ---------------------------------------------------------------------------------------- arithmetic

def check_answer(answer: str, steps: int) -> int:
    lines = answer.split("\n")
    assert re.fullmatch(r"#### \d+", lines[-1]), lines[-1]
    anns = ANN.findall(answer)
    assert len(anns) == steps == len(lines) - 1, answer  # one annotated step per line
    for line in lines[:-1]:
        assert line[0].isupper() or line[0] in "$<0123456789", line
        assert line.endswith("."), line
    for expr, shown, after in anns:
        assert value(expr) == Fraction(int(shown)), f"{expr}={shown}"
        assert after.rstrip(".,") == shown, f"<<{expr}={shown}>>{after}"
    for line in lines[:-1]:  # a calculation written before the annotation is the annotated one
        if " = " in line:
            m = re.search(r"(\d+(?:(?: ?[-+*/] ?| (?:plus|minus|times|divided by|x) )\d+)+) = \$?<<([^=]+)=", line)
            assert m, line
            shown = m.group(1)
            for word, op in (("divided by", "/"), ("times", "*"), ("plus", "+"), ("minus", "-"), ("x", "*")):
                shown = shown.replace(f" {word} ", op)
            assert shown.replace(" ", "") == m.group(2), line
    final = int(lines[-1][5:])
    assert final == int(anns[-1][1]) and gsm8k_reference(answer) == str(final)
    return final


def test_every_annotation_is_right_and_the_final_number_is_the_last_result(committed):
    for rs in committed.values():
        for r in rs:
            check_answer(r["answer"], r["steps"])


def test_fresh_problems_with_other_knobs_are_right_too():
    kn = wp.Knobs(max_count=30, max_size=25, max_extra=80, max_age=60)
    for split, rs in wp.generate(seed=7, n_train=300, n_test=150, knobs=kn).items():
        for r in rs:
            check_answer(r["answer"], r["steps"])


def test_loads_as_a_gsm8k_task():
    for split in ("train", "test"):
        exs = load_split(DataSettings(data=str(DATA)), split)
        assert all(e["reference"] == e["solution"].rsplit("#### ", 1)[1] for e in exs)
        assert all(e["prompt"].endswith("\nAnswer:") and e["target"].endswith("\nDone.") for e in exs)


# ---------------------------------------------------------------------------------------- the split

def test_split_rule_holds_on_the_committed_files(committed):
    final = {s: [int(r["answer"].rsplit("#### ", 1)[1]) for r in rs] for s, rs in committed.items()}
    assert all(wp.is_test_answer(a) for a in final["test"]) and not any(wp.is_test_answer(a) for a in final["train"])
    assert not set(final["train"]) & set(final["test"]), "a test answer is also a train answer"
    calc = {s: {tuple(sorted(e for e, _, _ in ANN.findall(r["answer"]))) for r in rs} for s, rs in committed.items()}
    assert not calc["train"] & calc["test"], "a test calculation chain also occurs in train"
    assert not {r["question"] for r in committed["train"]} & {r["question"] for r in committed["test"]}
    assert len({r["question"] for rs in committed.values() for r in rs}) == 768


def sentences(q: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.?])\s+", q) if s]


def test_held_out_phrasings_appear_in_test_only(committed):
    seen = {skeleton(s) for r in committed["train"] for s in sentences(r["question"])}
    new = [any(skeleton(s) not in seen for s in sentences(r["question"])) for r in committed["test"]]
    assert sum(new) / len(new) > 0.3, f"only {sum(new)} of {len(new)} test questions use a held-out phrasing"
    by_family = defaultdict(int)
    for r, n in zip(committed["test"], new):
        by_family[r["family"]] += n
    assert all(by_family[f] > 0 for f in wp.FAMILIES), dict(by_family)


def test_train_questions_never_use_the_first_variant():
    r = random.Random(5)
    for _ in range(300):
        fam, p, ask = wp.make_problem(r, wp.Knobs())
        variants = [[wp._fill(v, p, p.ctx["N"], True) for v in vs] for vs in p.facts + [ask]]
        q = wp.question(p, ask, test=False)
        assert [s for vs in variants for s in vs[1:] if s in q], q
        for vs in variants:
            assert sum(v in q for v in vs[1:]) >= 1 and vs[0] not in q, (fam, vs[0], q)


# ---------------------------------------------------------------------------------------- variety

def test_one_problem_has_many_solution_wordings():
    """The trap: if a problem had one or a few solution texts, a model would reach target perplexity ~1 by
    learning the template. Re-drawing the wording of one fixed problem must give (almost) always new text."""
    r = random.Random(11)
    for _ in range(40):
        fam, p, ask = wp.make_problem(r, wp.Knobs())
        texts = set()
        for s in range(100):
            p.r = random.Random(s)
            texts.add(wp.solution(p))
        if len(p.steps) == 1:
            assert len(texts) >= 40, (fam, len(texts))
        else:
            assert len(texts) >= 90, (fam, len(p.steps), len(texts))


def test_many_distinct_solution_templates_per_family(committed):
    lines, whole = defaultdict(set), defaultdict(list)
    for r in committed["train"]:
        sk = skeleton(r["answer"].rsplit("\n#### ", 1)[0])
        whole[r["family"]].append(sk)
        lines[r["family"]].update(sk.split("\n"))
    for fam in wp.FAMILIES:
        assert len(lines[fam]) >= 150, (fam, len(lines[fam]))
        # two train solutions of one family almost never share their whole phrasing
        assert len(set(whole[fam])) >= 0.9 * len(whole[fam]), (fam, len(set(whole[fam])), len(whole[fam]))
    first = Counter(r["answer"].split(" ", 1)[0] for r in committed["train"])
    assert first.most_common(1)[0][1] < 0.25 * len(committed["train"]), first.most_common(3)


def test_module_is_stdlib_only_and_short():
    src = (ROOT / "premem_kit" / "tasks" / "wordproblems.py").read_text(encoding="utf-8")
    assert len(src.splitlines()) < 400
    mods = {a.name.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(ast.parse(src)) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= {"__future__", "argparse", "hashlib", "json", "random", "dataclasses", "pathlib"}, mods
