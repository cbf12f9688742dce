"""Safe arithmetic for `<<expression=result>>` annotations (GSM8K): exact values without `eval`.

    safe_eval            the exact value (a Fraction) of plain arithmetic, parsed with `ast`
    normalize_expression whitespace, thousands separators and leading zeros removed
    check_annotation     whether the shown result of one annotation is right, by one of three rules
    values_agree         the tolerance of the "rounding" rule

The rules (ARITH_CHECKS; `curate.py rft --arith-check`), for an annotation "a=b[=c...]" whose left
side a has the value v:

reference  (default) Yuan et al.'s check (check_equation in their collect_rejection_sampling.py):
           only a and b are compared (text before the first "=" and between the first and second;
           later sides are ignored); b must be a number Python's float() reads ("24", "0.2", "-3",
           "1e3"; "1,000" is not one) and |v - b| < 1e-3 (absolute, in floating point). a is
           evaluated as written, with only its surrounding whitespace removed: "1,000*2" and "05+1"
           fail, as Python's eval fails on them there. The reference evaluates a with Python's eval;
           here safe_eval computes it, so the operators it refuses (% // ^, names, calls) fail here.
rounding   (the kit's earlier rule) every later side must agree with v: |v - r| <= 1e-4 *
           max(|v|, |r|) (relative 1e-4), or r is a plain decimal with d digits after the point and
           |v - r| <= 0.5 * 10^-d (v rounds to r at the shown precision: <<100/3=33.33>> and
           <<100/3=33>> pass). Thousands separators and leading zeros are accepted on every side.
exact      every later side must equal v exactly (as fractions): <<100/3=33.33>> fails,
           <<12/60=0.2>> passes. Separators and leading zeros as "rounding".

Values are exact fractions (no float round-off) except for non-integer powers.
"""
from __future__ import annotations

import ast
import math
import re
from fractions import Fraction

from premem_kit.core.errors import KitError

MAX_EXPRESSION_CHARS = 200        # longer annotation sides are refused (GSM8K's are < 60 characters)
MAX_EXPONENT = 100                # |exponent| of ** above this is refused
MAX_MAGNITUDE = Fraction(10) ** 30  # any intermediate value larger in magnitude is refused
MAX_BITS = 4096                   # numerator + denominator size of any intermediate fraction
REL_TOL = Fraction(1, 10**4)     # the "rounding" rule's relative tolerance
REFERENCE_ABS_TOL = 1e-3          # the "reference" rule's absolute tolerance (Yuan et al.)
ARITH_CHECKS = ("reference", "rounding", "exact")
DEFAULT_ARITH_CHECK = "reference"


class ExpressionError(KitError, ValueError):
    """An expression that is refused (not plain arithmetic, too large) or cannot be computed."""


_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
# thousands separators "1,000" and leading zeros "05" (a SyntaxError in Python 3)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LEADING_ZEROS = re.compile(r"(?<![\w.])0+(?=\d)")
# a decimal literal as written: 12, 1.5, .5, 3., 1e3, 2.5E-2 (no 0x.., 1_000, 1j)
_DECIMAL_LITERAL = re.compile(r"(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def normalize_expression(text: str) -> str:
    """Whitespace removed, "1,000" -> "1000", "05" -> "5". Nothing else is rewritten."""
    s = re.sub(r"\s+", "", text)
    s = _THOUSANDS.sub("", s)
    return _LEADING_ZEROS.sub("", s)


def _check(x: Fraction) -> Fraction:
    if abs(x) > MAX_MAGNITUDE:
        raise ExpressionError("intermediate value too large (> 1e30 in magnitude)")
    if x.numerator.bit_length() + x.denominator.bit_length() > MAX_BITS:
        raise ExpressionError("intermediate fraction too large")
    return x


def _constant(node, src: str) -> Fraction:
    v = node.value
    written = ast.get_source_segment(src, node) if src else None
    if written is not None and not _DECIMAL_LITERAL.fullmatch(written):
        raise ExpressionError(f"{written!r} is not a plain decimal number")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ExpressionError(f"constant {v!r} is not a number")
    if isinstance(v, float) and not math.isfinite(v):
        raise ExpressionError(f"constant {v!r} is not finite")
    return _check(Fraction(v) if isinstance(v, int) else Fraction(repr(v)))


def _power(a: Fraction, b: Fraction) -> Fraction:
    """a ** b, exact for integer exponents; refused when the result would be huge."""
    if abs(b) > MAX_EXPONENT:
        raise ExpressionError(f"exponent {float(b):g} is larger than {MAX_EXPONENT} in magnitude")
    if a == 0 and b < 0:
        raise ExpressionError("zero to a negative power")
    if b.denominator == 1:
        e = int(b)
        size = a.numerator.bit_length() + a.denominator.bit_length()
        if size * abs(e) > 4 * MAX_BITS:  # checked before computing: a ** e could take minutes
            raise ExpressionError("power too large")
        return _check(a ** e)
    if a < 0:
        raise ExpressionError("negative base to a fractional power")
    try:
        r = float(a) ** float(b)
    except OverflowError:
        raise ExpressionError("power too large") from None
    if not math.isfinite(r):
        raise ExpressionError("power too large")
    return _check(Fraction(r))


def _binary(op, a: Fraction, b: Fraction) -> Fraction:
    if isinstance(op, ast.Add):
        return _check(a + b)
    if isinstance(op, ast.Sub):
        return _check(a - b)
    if isinstance(op, ast.Mult):
        return _check(a * b)
    if isinstance(op, ast.Div):
        if b == 0:
            raise ExpressionError("division by zero")
        return _check(a / b)
    return _power(a, b)


def _ev(node, src: str = "") -> Fraction:
    if isinstance(node, ast.Expression):
        return _ev(node.body, src)
    if isinstance(node, ast.Constant):
        return _constant(node, src)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        x = _ev(node.operand, src)
        return -x if isinstance(node.op, ast.USub) else x
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _binary(node.op, _ev(node.left, src), _ev(node.right, src))
    what = type(node).__name__
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        what = type(node.op).__name__
    raise ExpressionError(f"{what} is not allowed (only numbers, + - * / ** ( ) and unary minus)")


def safe_eval(expr: str, normalize: bool = True) -> Fraction:
    """The exact value of an arithmetic expression, parsed with `ast` and never `eval`-ed.

    Allowed: int/float literals, binary + - * / **, unary - (and +), parentheses. Refused with
    ExpressionError: names, attributes, calls, subscripts, comparisons, any other operator or literal,
    |exponent| > 100, intermediate values beyond 1e30, expressions over 200 characters, literals that are
    not plain decimals (0x10, 1_000, 1j), and whatever does not parse. With normalize, "1,000"
    thousands separators and leading zeros are accepted (normalize_expression); without, only the
    surrounding whitespace is removed and the text is parsed as Python would ("1,000" is then a tuple
    and "05" a syntax error: both refused).
    """
    s = normalize_expression(expr) if normalize else expr.strip()
    if not s:
        raise ExpressionError("empty expression")
    if len(s) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(s, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise ExpressionError(f"does not parse: {type(e).__name__}") from None
    try:
        return _ev(tree, s)
    except RecursionError:
        raise ExpressionError("expression nested too deeply") from None


_PLAIN_NUMBER = re.compile(r"^[-+]?(\d*)\.?(\d*)$")


def shown_decimals(result_text: str) -> int | None:
    """Digits after the decimal point of a plain number as written ("0.2" -> 1, "24" -> 0), else None."""
    s = normalize_expression(result_text)
    m = _PLAIN_NUMBER.match(s)
    if not m or not (m.group(1) or m.group(2)):
        return None
    return len(m.group(2))


def values_agree(value: Fraction, shown: Fraction, decimals: int | None) -> bool:
    """Whether an expression's value v and the shown result r agree: |v - r| <= 1e-4 * max(|v|, |r|)
    (relative 1e-4), or r is a plain decimal with d digits after the point and |v - r| <= 0.5 * 10^-d
    (v rounds to r at the shown precision; GSM8K writes <<12/60=0.2>>, <<100/3=33.33>> and sometimes
    <<100/3=33>>)."""
    diff = abs(value - shown)
    if diff <= REL_TOL * max(abs(value), abs(shown)):
        return True
    return decimals is not None and diff <= Fraction(1, 2 * 10**decimals)


def check_reference(text: str) -> tuple[bool, str]:
    """Yuan et al.'s check of one annotation (the "reference" rule, see the module docstring): the
    value of the text before the first "=" against the float between the first and second "=",
    absolute tolerance 1e-3 (strict <), later sides ignored."""
    parts = text.split("=")
    if len(parts) < 2:
        return False, f"no '=' in <<{text}>>"
    try:
        value = float(safe_eval(parts[0], normalize=False))
    except ExpressionError as e:
        return False, f"<<{text}>>: {e}"
    try:
        shown = float(parts[1])  # float() only parses a number: nothing is evaluated
    except ValueError:
        return False, f"<<{text}>>: {parts[1].strip()!r} is not a number"
    if abs(value - shown) < REFERENCE_ABS_TOL:
        return True, ""
    return False, f"<<{text}>>: left side is {value:g}, not {parts[1].strip()}"


def check_annotation(text: str, rule: str = DEFAULT_ARITH_CHECK) -> tuple[bool, str]:
    """(ok, reason) for the inside of one `<<...>>` annotation, e.g. "48/2=24", by `rule`: "reference"
    (Yuan et al.'s: first two sides, absolute 1e-3), "rounding" (every later side agrees with the first
    side's value by values_agree) or "exact" (every later side equals it). See the module docstring."""
    if rule == "reference":
        return check_reference(text)
    if rule not in ARITH_CHECKS:
        raise ValueError(f"arithmetic check {rule!r}: expected one of {', '.join(ARITH_CHECKS)}")
    parts = text.split("=")
    if len(parts) < 2:
        return False, f"no '=' in <<{text}>>"
    try:
        value = safe_eval(parts[0])
        for p in parts[1:]:
            shown = safe_eval(p)
            ok = value == shown if rule == "exact" else values_agree(value, shown, shown_decimals(p))
            if not ok:
                return False, f"<<{text}>>: left side is {float(value):g}, not {p.strip()}"
    except ExpressionError as e:
        return False, f"<<{text}>>: {e}"
    return True, ""
