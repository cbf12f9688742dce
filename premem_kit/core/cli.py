"""What every script does around its library call: logging, thread count, errors -> exit 2.

Imports nothing heavy, so that a script can parse its arguments and reject bad ones in well under a
second, before torch and transformers load.
"""
from __future__ import annotations

import logging
import os
import sys

from premem_kit.core.errors import KitError


def setup(threads: bool = True) -> None:
    """Log lines with time and stage; one PyTorch thread per core this process may use (OMP_NUM_THREADS
    set beforehand wins), since more threads than cores slows sampling by 10x or more."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if threads and "OMP_NUM_THREADS" not in os.environ and hasattr(os, "sched_getaffinity"):
        os.environ["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0))))


def run(prog: str, fn, *args, **kwargs) -> int:
    """Call fn; a KitError becomes `prog: error: message` on stderr and exit status 2."""
    try:
        out = fn(*args, **kwargs)
    except KitError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return out if isinstance(out, int) else 0


# argparse types: a bad value is rejected while parsing (exit 2, the option named), before any work
def whole_number(text: str, low: int) -> int:
    """An integer >= low, or an argparse error saying so."""
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {v}")
    return v


def positive_int(text: str) -> int:
    return whole_number(text, 1)


def nonnegative_int(text: str) -> int:
    """A count that may be 0 (GPUs per cell, bootstrap resamples, ...)."""
    return whole_number(text, 0)


def finite_float(text: str) -> float:
    import argparse
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def unit_float(text: str) -> float:
    """A number in [0, 1] (a fraction, an accuracy cut, a probability)."""
    import argparse

    v = finite_float(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {v}")
    return v


def positive_float(text: str) -> float:
    import argparse

    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {v}")
    return v


def perplexity_threshold(text: str) -> float:
    """A perplexity threshold: a number > 1 (perplexity is never below 1, so a threshold <= 1 would
    mark nothing memorized and PreMemAcc would be train accuracy)."""
    import argparse

    v = finite_float(text)
    if v <= 1:
        raise argparse.ArgumentTypeError(f"expected a perplexity > 1, got {v} (perplexity is never below 1: a "
                                         f"threshold <= 1 marks nothing memorized, and PreMemAcc is then train "
                                         f"accuracy)")
    return v


def out_folder(text: str):
    """An output folder: a path that is a folder or does not exist yet (not a file)."""
    import argparse
    from pathlib import Path

    p = Path(text).expanduser()
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"{p} is a file; expected an output folder (one that exists or will be made)")
    return p


def existing_file(text: str):
    """A file to read (not a folder, not missing)."""
    import argparse
    from pathlib import Path

    p = Path(text).expanduser()
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"{p} {'is a folder' if p.is_dir() else 'does not exist'}; expected a file")
    return p
