"""Answer extraction and grading for GSM8K and MATH completions.

Every graded completion gets one of three outcomes (``records.OUTCOMES``, the record schema):

    correct      an answer was extracted and it equals the reference
    incorrect    an answer was extracted but it differs from the reference
    unparseable  no answer could be extracted (or, for MATH, math-verify could not parse it)

Completions follow the authors' target format, " " + solution + "\\nDone.":

    GSM8K  the solution ends with "#### N"; we compare N with the reference as a number.
    MATH   the solution contains \\boxed{...}; we compare the last boxed expression with the reference's
           last boxed expression using HuggingFace's math-verify (symbolic / numeric equivalence).

Callers should cut sampled text at the stop string first (``stop_at``), so that garbage generated after
"\\nDone." is ignored; the extractors themselves also cope with an answer followed by more text.

math-verify notes (version 0.9.0):
  * ``parse`` and ``verify`` guard against runaway sympy work with ``signal.alarm``, which only works in
    the main thread of the main interpreter: called from another thread they raise ValueError. We pass
    a timeout only when running in the main thread and ``None`` (no timeout) otherwise, so grading works
    from worker threads too, just without that protection there.
  * ``verify(gold, pred)`` is not symmetric: the reference must come first.
  * ``parse`` returns a list of a sympy object and the raw matched string; when sympy parsing fails the
    list holds only the string (or is empty). We call a prediction "unparseable" when it yields no sympy
    object and does not match the reference as a string either.
"""
from __future__ import annotations

import re
import threading
from fractions import Fraction
from decimal import Decimal, InvalidOperation

# math-verify timeout (seconds) for one parse / one comparison, used only in the main thread.
MATH_VERIFY_TIMEOUT = 5
# GSM8K answers are compared as exact fractions, with this absolute tolerance.
GSM8K_TOLERANCE = Fraction(1, 10**6)


# ----------------------------------------------------------------------------- helpers


def stop_at(text: str, stop: str = "\nDone.") -> str:
    """The text up to (not including) the first occurrence of ``stop``; the whole text if it is absent."""
    i = text.find(stop)
    return text if i < 0 else text[:i]


# "\boxed" or "\fbox", not followed by another letter (so "\boxedx" is not a match).
_BOXED = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def _read_boxed(text: str, start: int) -> tuple[str | None, int]:
    """Read the argument of a \\boxed command whose name ends just before ``start``.

    Returns (content, end position), with content None when the braces are unbalanced or there is no
    argument. Handles ``\\boxed{...}`` with nested braces and ``\\boxed 5`` (one token, up to whitespace
    or ``$``).
    """
    i = start
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        depth = 0
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i + 1:j], j + 1
        return None, len(text)  # unbalanced
    if i > start:  # "\boxed 5": a single token after the space
        m = re.match(r"[^\s$]+", text[i:])
        if m:
            token = m.group(0).rstrip(".,")
            return (token or None), i + m.end()
    return None, i


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed TOKEN`` in ``text``.

    Nested braces are handled (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); a boxed expression
    inside another one belongs to the outer one. None when there is none, or when the last one is
    unbalanced.
    """
    content, pos = None, 0
    while True:
        m = _BOXED.search(text, pos)
        if m is None:
            return content
        content, pos = _read_boxed(text, m.end())


# ----------------------------------------------------------------------------- GSM8K

# A number: with "," thousands separators, or plain digits, with optional decimals, optional sign.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def extract_gsm8k(text: str) -> str | None:
    """The number after the last ``####`` in ``text``, cleaned ("1,000" -> "1000", "$18." -> "18").

    The first number-looking token after the marker is taken, so "#### 18 dollars" and
    "#### 18\\nDone." both give "18". None when there is no ``####`` or no number after it.
    """
    i = text.rfind("####")
    if i < 0:
        return None
    tail = text[i + 4:].replace("$", "")
    m = _NUMBER.search(tail)
    return m.group(0).replace(",", "") if m else None


def gsm8k_reference(answer_field: str) -> str:
    """The reference answer of a GSM8K ``answer`` field: the cleaned number after its last ``####``."""
    ans = extract_gsm8k(answer_field)
    if ans is not None:
        return ans
    i = answer_field.rfind("####")
    if i < 0:
        raise ValueError(f"GSM8K answer has no '####' line: {answer_field[-80:]!r}")
    return answer_field[i + 4:].strip().replace(",", "").replace("$", "").rstrip(".")  # not a number


def _as_fraction(s: str) -> Fraction | None:
    try:
        return Fraction(Decimal(s.replace(",", "").replace("$", "").strip().rstrip(".")))
    except (InvalidOperation, ValueError, ArithmeticError):
        return None


def grade_gsm8k(completion: str, reference: str) -> tuple[str | None, str]:
    """(extracted answer, outcome) of a GSM8K completion; numbers are compared by value (5.0 == 5)."""
    pred = extract_gsm8k(completion)
    if pred is None:
        return None, "unparseable"
    p, r = _as_fraction(pred), _as_fraction(str(reference))
    if p is None:
        return pred, "unparseable"
    if r is None:  # a non-numeric reference can only be matched literally
        return pred, "correct" if pred == str(reference).strip() else "incorrect"
    return pred, "correct" if abs(p - r) <= GSM8K_TOLERANCE else "incorrect"


# ----------------------------------------------------------------------------- MATH

_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)


def extract_math(text: str) -> str | None:
    """The last boxed expression in ``text``; failing that, what follows a final "The answer is".

    The fallback takes the rest of that line and strips whitespace, a trailing "." and "$" delimiters
    ("The answer is $\\frac{1}{2}$." -> "\\frac{1}{2}"). None when neither is found.
    """
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    matches = list(_ANSWER_IS.finditer(text))
    if not matches:
        return None
    ans = text[matches[-1].end():].split("\n", 1)[0]
    ans = ans.strip().lstrip(":").strip().rstrip(".").strip().strip("$").strip().rstrip(".").strip()
    return ans or None


def math_reference(solution: str) -> str | None:
    """The reference answer of a MATH solution: its last boxed expression (None if it has none)."""
    boxed = last_boxed(solution)
    return boxed.strip() if boxed is not None else None


def _math_verify_timeout() -> int | None:
    """math-verify's signal-based timeout only works in the main thread; elsewhere run without one."""
    return MATH_VERIFY_TIMEOUT if threading.current_thread() is threading.main_thread() else None


def _mv_parse(expr: str) -> list:
    """Parse one bare answer with math-verify, by boxing it so the whole expression is taken."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    return parse("\\boxed{" + expr + "}", extraction_config=config, parsing_timeout=_math_verify_timeout())


def grade_math(completion: str, reference: str | None) -> tuple[str | None, str]:
    """(extracted answer, outcome) of a MATH completion, checked with math-verify against the reference.

    Equivalent forms count as equal: \\dfrac vs \\frac, 0.5 vs \\frac12, units (5\\text{ cm} vs 5),
    degrees (90^\\circ vs 90), \\sqrt{2}/2 vs \\frac{\\sqrt2}{2}, intervals and tuples.
    A missing or unparseable reference makes every parsed answer "incorrect".
    """
    from math_verify import verify
    from sympy import Basic, MatrixBase

    pred = extract_math(completion)
    if pred is None:
        return None, "unparseable"
    parsed_pred = _mv_parse(pred)
    if reference is not None and str(reference).strip():
        gold = _mv_parse(str(reference))
        if gold and parsed_pred and verify(gold, parsed_pred, timeout_seconds=_math_verify_timeout()):
            return pred, "correct"
    if not any(isinstance(x, (Basic, MatrixBase)) for x in parsed_pred):
        return pred, "unparseable"
    return pred, "incorrect"


# ----------------------------------------------------------------------------- dispatch


def grade(task: str, completion: str, reference) -> tuple[str | None, str]:
    """(extracted answer, outcome) for ``task`` "gsm8k" or "math"."""
    if task == "gsm8k":
        return grade_gsm8k(completion, reference)
    if task == "math":
        return grade_math(completion, reference)
    raise ValueError(f"unknown task {task!r}: expected 'gsm8k' or 'math'")
