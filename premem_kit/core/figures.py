"""Figures: the one place that sets up matplotlib and writes figure files (PNG + PDF, atomically).

Drawing code lives beside the analysis it shows (analysis_figures.py, robustness.py, ...); every
figure goes through `pyplot()` and `save()` here, so a figure is never half written and every file
gets the same resolution and layout.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from premem_kit.core.files import atomic_write_with

FORMATS = ("png", "pdf")
DPI = 150


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend (works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, folder, stem: str, close: bool = True) -> list[str]:
    """Write folder/stem.png and folder/stem.pdf atomically; returns the file names."""
    folder = Path(folder)
    names = []
    for ext in FORMATS:
        path = folder / f"{stem}.{ext}"
        atomic_write_with(path, lambda f, ext=ext: fig.savefig(f, format=ext, dpi=DPI, bbox_inches="tight"))
        names.append(path.name)
    if close:
        pyplot().close(fig)
    return names


def diagonal(ax, lo=0.0, hi=1.0, label="y = x") -> None:
    """The y = x reference line of prediction plots."""
    ax.plot([lo, hi], [lo, hi], ls="--", c="0.5", lw=1, zorder=0, label=label)


def limits(*arrays, pad: float = 0.05) -> tuple[float, float]:
    """Shared axis limits within [0, 1] that cover every finite value, with a small margin."""
    v = np.concatenate([np.asarray(a, float).ravel() for a in arrays]) if arrays else np.array([])
    v = v[np.isfinite(v)]
    lo, hi = (0.0, 1.0) if v.size == 0 else (float(v.min()), float(v.max()))
    margin = pad * max(hi - lo, 0.05)
    return max(0.0, lo - margin), min(1.0, hi + margin)


def fmt(v, spec: str = ".4f") -> str:
    """A number for a title or table; 'n/a' for None or NaN."""
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    return format(v, spec)
