"""Tests for grading.py: answer extraction and grading of GSM8K and MATH completions (real math-verify)."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from premem_kit.core import records
from premem_kit.tasks import grading

DONE = "\nDone."


def gsm(solution: str) -> str:
    """A completion in the target format: " " + solution + "\\nDone."."""
    return " " + solution + DONE


# ----------------------------------------------------------------------------- last_boxed


@pytest.mark.parametrize("text, expected", [
    (r"so $\boxed{5}$.", "5"),
    (r"$\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),                          # nested braces
    (r"\boxed{\left\{ \frac{a}{b} \right\}}", r"\left\{ \frac{a}{b} \right\}"),
    (r"first \boxed{1}, then \boxed{2}, finally \boxed{3} and text", "3"),  # last of several wins
    (r"\fbox{7}", "7"),
    (r"the answer is $\boxed 5$.", "5"),                                 # \boxed TOKEN form
    (r"\boxed{\boxed{4}}", r"\boxed{4}"),                                # inner box belongs to outer
    (r"\boxed{1} and then \boxed{\frac{1}{2}", None),                    # last one unbalanced
    ("no box here", None),
    (r"\boxedx{3}", None),                                               # not the \boxed command
])
def test_last_boxed(text, expected):
    assert grading.last_boxed(text) == expected


# ----------------------------------------------------------------------------- GSM8K


def test_gsm8k_reference_on_a_real_answer_field():
    answer = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
              "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
    assert grading.gsm8k_reference(answer) == "72"
    assert grading.gsm8k_reference("He pays 2*500=$<<2*500=1000>>1000.\n#### 1,000") == "1000"
    with pytest.raises(ValueError, match="####"):
        grading.gsm8k_reference("no marker here")


@pytest.mark.parametrize("text, expected", [
    ("#### 72", "72"),
    ("#### 1,000", "1000"),                  # thousands separator
    ("#### -3", "-3"),
    ("#### $18", "18"),                      # dollar sign
    ("#### -$3", "-3"),
    ("#### 18.", "18"),                      # trailing period
    ("#### 0.50", "0.50"),
    ("#### 18\nDone.", "18"),                # followed by more text
    ("#### 18 dollars", "18"),
    ("#### 5 #### 6", "6"),                  # last marker wins
    ("x = 3 so 4+4 = 8", None),              # no marker
    ("####\nDone.", None),                   # marker without a number
])
def test_extract_gsm8k(text, expected):
    assert grading.extract_gsm8k(text) == expected


@pytest.mark.parametrize("completion, reference, answer, outcome", [
    (gsm("48+24 = <<48+24=72>>72\n#### 72"), "72", "72", "correct"),
    (gsm("#### 1,000"), "1000", "1000", "correct"),
    (gsm("#### 1000"), "1,000", "1000", "correct"),           # reference with a separator too
    (gsm("#### -3"), "-3", "-3", "correct"),
    (gsm("#### 3"), "-3", "3", "incorrect"),                  # sign matters
    (gsm("#### 0.50"), "0.5", "0.50", "correct"),
    (gsm("#### 5.0"), "5", "5.0", "correct"),
    (gsm("#### $12."), "12", "12", "correct"),
    (gsm("#### 71"), "72", "71", "incorrect"),
    (gsm("#### 72.5"), "72", "72.5", "incorrect"),
    (gsm("She sold 72 clips."), "72", None, "unparseable"),  # no final answer
    (" #### 72" + DONE + " Question: ... #### 99", "72", "99", "incorrect"),  # why callers cut with stop_at
])
def test_grade_gsm8k(completion, reference, answer, outcome):
    assert grading.grade_gsm8k(completion, reference) == (answer, outcome)
    assert grading.grade("gsm8k", completion, reference) == (answer, outcome)


def test_stop_at_drops_text_generated_after_done():
    text = " #### 72" + DONE + " Question: ... #### 99" + DONE
    assert grading.stop_at(text) == " #### 72"
    assert grading.grade("gsm8k", grading.stop_at(text), "72") == ("72", "correct")
    assert grading.stop_at("no stop string") == "no stop string"
    assert grading.stop_at("a<END>b<END>", stop="<END>") == "a"


# ----------------------------------------------------------------------------- MATH


@pytest.mark.parametrize("text, expected", [
    (r"So the answer is $\boxed{\frac{1}{2}}$." + DONE, r"\frac{1}{2}"),
    (r"\boxed{1} wrong, redo: \boxed{2}", "2"),
    ("Thus, the answer is $\\frac{3}{4}$.\nDone.", r"\frac{3}{4}"),        # fallback, $ and period stripped
    ("The answer is 12 \nmore text", "12"),                             # stops at the newline
    ("I think THE ANSWER IS 7.", "7"),                                    # case-insensitive
    ("the answer is 3. Actually the answer is 4.", "4"),                  # the final one
    ("no answer at all", None),
    ("The answer is $$.", None),
])
def test_extract_math(text, expected):
    assert grading.extract_math(text) == expected


def test_math_reference():
    sol = (r"We have $x^2 = \frac{1}{4}$, so $x = \pm\frac{1}{2}$. The positive root is "
           r"$\boxed{\frac{1}{2}}$.")
    assert grading.math_reference(sol) == r"\frac{1}{2}"
    assert grading.math_reference(r"$\boxed 3$") == "3"
    assert grading.math_reference("no box") is None


def boxed(ans: str) -> str:
    """A MATH completion in the target format with a boxed final answer."""
    return " The computation gives $\\boxed{" + ans + "}$." + DONE


@pytest.mark.parametrize("completion, reference, answer, outcome", [
    (boxed(r"\frac{1}{2}"), r"\frac{1}{2}", r"\frac{1}{2}", "correct"),
    (boxed("0.50"), r"\frac{1}{2}", "0.50", "correct"),                          # 0.50 vs 1/2
    (boxed("0.5"), r"\frac12", "0.5", "correct"),
    (boxed("1/2"), r"\frac{1}{2}", "1/2", "correct"),
    (boxed(r"\dfrac{3}{4}"), r"\frac{3}{4}", r"\dfrac{3}{4}", "correct"),        # \dfrac vs \frac
    (boxed(r"\frac{1}{3}"), r"\frac{1}{2}", r"\frac{1}{3}", "incorrect"),
    (boxed(r"5\text{ cm}"), "5", r"5\text{ cm}", "correct"),                   # units
    (boxed("5"), r"5\text{ cm}", "5", "correct"),
    (boxed(r"6\text{ cm}"), r"5\text{ cm}", r"6\text{ cm}", "incorrect"),
    (boxed(r"90^\circ"), "90", r"90^\circ", "correct"),                         # degrees
    (boxed("90"), r"90^\circ", "90", "correct"),
    (boxed(r"(1, 2]"), "(1,2]", "(1, 2]", "correct"),                           # intervals
    (boxed("[1,2]"), "(1,2]", "[1,2]", "incorrect"),
    (boxed(r"(-\infty, 3]"), r"(-\infty,3]", r"(-\infty, 3]", "correct"),
    (boxed("(3, -1)"), "(3,-1)", "(3, -1)", "correct"),                         # tuples
    (boxed("(-1, 3)"), "(3,-1)", "(-1, 3)", "incorrect"),
    (boxed("(1,2)"), "(1, 2)", "(1,2)", "correct"),
    (boxed(r"\sqrt{2}/2"), r"\frac{\sqrt2}{2}", r"\sqrt{2}/2", "correct"),
    (boxed("1,000"), "1000", "1,000", "correct"),
    (boxed("-3"), "-3", "-3", "correct"),
    (boxed("3"), "-3", "3", "incorrect"),
    (boxed(r"\$5"), "5", r"\$5", "correct"),                                    # dollar sign
    (boxed(r"x^2+1"), r"1+x^2", "x^2+1", "correct"),
    (boxed(r"\text{(C)}"), r"\text{(C)}", r"\text{(C)}", "correct"),
    (boxed(r"\text{Monday}"), r"\text{Tuesday}", r"\text{Monday}", "incorrect"),
    (r" \boxed{7} is wrong; redo: \boxed{\frac{1}{2}}" + DONE, "0.5", r"\frac{1}{2}", "correct"),
    (r" first \boxed{\frac{1}{2}} then \boxed{7}" + DONE, "0.5", "7", "incorrect"),   # last box wins
    (" So the answer is $\\frac{1}{2}$.\nDone.", "0.5", r"\frac{1}{2}", "correct"),  # fallback
    (" The answer is 12 inches.\nDone.", "12", "12 inches", "correct"),
    (" We get x = 4, so it follows." + DONE, "4", None, "unparseable"),          # no final answer
    (boxed("???"), "4", "???", "unparseable"),                                 # math-verify can't parse
    (boxed("4"), None, "4", "incorrect"),                                      # no reference to match
])
def test_grade_math(completion, reference, answer, outcome):
    assert grading.grade_math(completion, reference) == (answer, outcome)
    assert grading.grade("math", completion, reference) == (answer, outcome)


def test_grade_math_from_a_worker_thread():
    """math-verify's signal-based timeouts fail outside the main thread; grading must still work there."""
    results = []

    def work():
        try:
            results.append(grading.grade_math(boxed(r"\dfrac{1}{2}"), "0.5"))
            results.append(grading.grade_math(boxed("3"), "4"))
        except Exception as e:  # noqa: BLE001 - reported through the assertion below
            results.append(e)

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=60)
    assert results == [(r"\dfrac{1}{2}", "correct"), ("3", "incorrect")]


# ----------------------------------------------------------------------------- dispatch


def test_outcomes_and_unknown_task():
    assert records.OUTCOMES == ("correct", "incorrect", "unparseable")
    cases = [("gsm8k", gsm("#### 2"), "2"), ("gsm8k", gsm("#### 3"), "2"), ("gsm8k", "x", "2"),
             ("math", boxed("2"), "2"), ("math", boxed("3"), "2"), ("math", "x", "2")]
    got = [grading.grade(task, comp, ref)[1] for task, comp, ref in cases]
    assert got == ["correct", "incorrect", "unparseable"] * 2
    with pytest.raises(ValueError, match="aime"):
        grading.grade("aime", "#### 1", "1")
