"""The figures of `premem.py analyze`: Figures 1, 3 and 4 of the paper and R^2 against the threshold.

Each figure has a function that draws it and returns the matplotlib Figure (fig1, fig3, fig4,
r2_vs_threshold); make_figures draws them all and writes them with figures.save.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from premem_kit.core import figures
from premem_kit.metric import premem_loglog
from premem_kit.analysis.rundata import AnalysisError, RunData

FIG3_MAX_EXAMPLES = 200
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">"]  # fig4: one marker per number of epochs


def make_figures(runs: list[RunData], points: pd.DataFrame, sweep: pd.DataFrame, summary: dict, folder,
                 fig3_run: str | None = None) -> list[str]:
    """Draw and write fig1, fig3, fig4 and r2_vs_threshold (PNG + PDF) into folder; returns file names."""
    plt = figures.pyplot()
    folder = Path(folder)
    files = []
    with plt.rc_context({"font.size": 9}):
        files += figures.save(fig1(points, summary), folder, "fig1")
        files += figures.save(fig3(choose_fig3_run(runs, fig3_run), summary), folder, "fig3")
        files += figures.save(fig4(points, summary), folder, "fig4")
        files += figures.save(r2_vs_threshold(sweep, summary), folder, "r2_vs_threshold")
    return files


# ----------------------------------------------------------------------------- Figure 1


def fig1(points: pd.DataFrame, summary: dict):
    """Train accuracy (left) and PreMemAcc (right) against test accuracy, one line per run over its
    checkpoints; each panel's title gives its R^2 against y = x."""
    plt = figures.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    lo, hi = figures.limits(points["train_acc"], points["premem_acc"], points["test_acc"])
    cmap = plt.get_cmap("tab20" if points["run"].nunique() > 10 else "tab10")
    for ax, col, label, r2 in (
        (axes[0], "train_acc", "train accuracy", summary["train_acc_r2"]),
        (axes[1], "premem_acc", "pre-memorization train accuracy", summary["r2"]),
    ):
        figures.diagonal(ax, lo, hi)
        for k, (run, g) in enumerate(points.groupby("run", sort=False)):
            g = g.sort_values("step")
            ax.plot(g[col], g["test_acc"], "-o", ms=4, color=cmap(k % cmap.N), label=run)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(label)
        ax.set_title(f"{label} vs test accuracy (R$^2$ = {figures.fmt(r2, '.3f')})")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False)
    if np.allclose(points["train_acc"], points["premem_acc"]):  # not a comparison: say why the panels match
        axes[1].text(0.5, 0.02, "same as train accuracy: no solved example was memorized\nbefore it was solved",
                     transform=axes[1].transAxes, ha="center", va="bottom", fontsize=7,
                     bbox=dict(fc="w", ec="0.6"))
    note = f" (R$^2$ not meaningful: {summary['r2_note'].split(':')[0]})" if summary.get("r2_note") else ""
    fig.suptitle("Figure 1: one line per run over its checkpoints" + note, y=1.0)
    return fig


# ----------------------------------------------------------------------------- Figure 3


def choose_fig3_run(runs: list[RunData], fig3_run: str | None = None) -> RunData:
    """The run named fig3_run (run or folder name), else the first run with the most checkpoints."""
    if fig3_run is not None:
        for r in runs:
            if r.name == fig3_run or r.path.name == fig3_run:
                return r
        raise AnalysisError(f"--fig3-run {fig3_run!r} is not among the analyzed runs: "
                            + ", ".join(r.name for r in runs))
    return max(runs, key=lambda r: len(r.steps))


def fig3_order(acc, ll, t, max_examples=FIG3_MAX_EXAMPLES, seed=0) -> np.ndarray:
    """Rows shown in Figure 3: a fixed random subsample (seed 0) of at most max_examples examples,
    ordered by the checkpoint at which each is first memorized (earliest on top; never memorized at
    the bottom), ties broken by PreMemAcc at the last checkpoint, highest first."""
    c, n = acc.shape
    idx = np.arange(n)
    if n > max_examples:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_examples, replace=False))
    mem = ll[:, idx] < t
    first = np.where(mem.any(axis=0), np.argmax(mem, axis=0), c)
    pm = premem_loglog(acc[:, idx], ll[:, idx], t)[-1]
    return idx[np.lexsort((-pm, first))]


def fig3_colours(acc, ll, t, hi) -> np.ndarray:
    """RGB per cell. HSV value (brightness) = 0.1 + 0.9 * accuracy; hue from loglog perplexity, split
    at the threshold t: memorized (loglog < t) runs red -> orange over [t - 2, t], not memorized runs
    green -> blue over [t, hi]; so warm = memorized, cool = not memorized."""
    from matplotlib.colors import hsv_to_rgb

    ll = np.nan_to_num(np.asarray(ll, dtype=np.float64), nan=-np.inf)
    lo = t - 2.0
    below = 0.12 * np.clip((ll - lo) / (t - lo), 0, 1)
    above = 0.3 + 0.4 * np.clip((ll - t) / max(hi - t, 1e-9), 0, 1)
    hue = np.where(ll < t, below, above)
    val = 0.1 + 0.9 * np.clip(acc, 0, 1)
    return hsv_to_rgb(np.stack([hue, np.ones_like(hue), val], axis=-1))


def fig3(run: RunData, summary: dict):
    """Learning progression of one run: a row per train example (fig3_order), a column per checkpoint,
    coloured by fig3_colours; a key on the right."""
    plt = figures.pyplot()
    t = summary["threshold_loglog"]
    ll = run.ll
    order = fig3_order(run.acc, ll, t)
    fin = ll[np.isfinite(ll)]
    hi = max(float(np.quantile(fin, 0.99)) if fin.size else t + 1.0, t + 1.0)
    rgb = fig3_colours(run.acc[:, order].T, ll[:, order].T, t, hi)

    fig = plt.figure(figsize=(7.5, 7.5))
    ax = fig.add_axes([0.1, 0.08, 0.55, 0.84])
    ax.imshow(rgb, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(run.steps)))
    ax.set_xticklabels([f"{s}\n({e:.3g} ep)" for s, e in zip(run.steps, run.epochs)], fontsize=7)
    ax.set_xlabel("checkpoint step (epoch)")
    ax.set_ylabel(f"train examples ({len(order)} of {run.acc.shape[1]}), by first memorized checkpoint, "
                  "then PreMemAcc", fontsize=8)
    ax.set_title(f"Figure 3: learning progression, {run.name}", fontsize=9)
    ax.set_yticks([])

    key = fig.add_axes([0.74, 0.6, 0.22, 0.25])
    LX, AY = np.meshgrid(np.linspace(t - 2.0, hi, 128), np.linspace(0, 1, 32))
    key.imshow(fig3_colours(AY, LX, t, hi), origin="lower", aspect="auto", extent=[t - 2.0, hi, 0, 1])
    key.axvline(t, color="w", lw=1.2, ls="--")
    key.set_xlabel(f"log(log(perplexity)) (hue)\nwarm: memorized (< {t:.2f}, ppl < {summary['threshold_ppl']:.4g})",
                   fontsize=7)
    key.set_ylabel("accuracy (brightness)", fontsize=7)
    key.tick_params(labelsize=7)
    return fig


# ----------------------------------------------------------------------------- Figure 4


def _lr_norm(lrs: np.ndarray, ok: np.ndarray):
    """Log colour scale over the known learning rates (a decade either side of a single one)."""
    from matplotlib.colors import LogNorm

    if not ok.any():
        return LogNorm(vmin=1e-6, vmax=1e-3)
    vmin, vmax = lrs[ok].min(), lrs[ok].max()
    if vmin == vmax:
        vmin, vmax = vmin / 2, vmax * 2
    return LogNorm(vmin=vmin, vmax=vmax)


def fig4(points: pd.DataFrame, summary: dict):
    """PreMemAcc against test accuracy, one point per (run, checkpoint): colour = learning rate, marker =
    number of epochs, black edge = held-out run; R^2 and the threshold in the title."""
    from matplotlib.lines import Line2D

    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(5.8, 4.8))
    lo, hi = figures.limits(points["premem_acc"], points["test_acc"])
    figures.diagonal(ax, lo, hi)
    lrs = pd.to_numeric(points["lr"], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(lrs) & (lrs > 0)
    norm, cmap = _lr_norm(lrs, ok), plt.get_cmap("viridis")
    epochs = points["num_epochs"].astype(object).where(points["num_epochs"].notna(), "?")
    levels = sorted(set(epochs), key=lambda v: (isinstance(v, str), v))
    heldout = ~points["calibration"].to_numpy(dtype=bool)
    x, y = points["premem_acc"], points["test_acc"]
    for k, e in enumerate(levels):
        sel, marker = (epochs == e).to_numpy(), MARKERS[k % len(MARKERS)]
        for h in (False, True):
            edge = dict(edgecolors="k" if h else "none")
            s = sel & (heldout == h) & ok
            if s.any():
                ax.scatter(x[s], y[s], c=lrs[s], cmap=cmap, norm=norm, marker=marker, s=46, **edge,
                           linewidths=1.4 if h else 0)
            s = sel & (heldout == h) & ~ok
            if s.any():
                ax.scatter(x[s], y[s], c="0.6", marker=marker, s=46, **edge)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="learning rate")
    handles = [Line2D([], [], ls="", marker=MARKERS[k % len(MARKERS)], color="0.4",
                      label=f"{e} epoch{'' if e == 1 else 's'}") for k, e in enumerate(levels)]
    if heldout.any():
        handles.append(Line2D([], [], ls="", marker="o", mfc="w", mec="k", mew=1.4, label="held-out run"))
    handles.append(Line2D([], [], ls="--", c="0.5", label="y = x"))
    ax.legend(handles=handles, loc="upper left", fontsize=7)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("pre-memorization train accuracy")
    ax.set_ylabel("test accuracy")
    title = f"R$^2$ = {figures.fmt(summary['r2'], '.3f')}"
    if summary.get("r2_heldout") is not None:
        title += f" (held-out {summary['r2_heldout']:.3f})"
    ax.set_title(f"{title}; loglog threshold {summary['threshold_loglog']:.2f} (ppl {summary['threshold_ppl']:.4g})")
    ax.grid(alpha=0.3)
    return fig


# ----------------------------------------------------------------------------- R^2 against the threshold


def r2_vs_threshold(sweep: pd.DataFrame, summary: dict):
    """Calibration R^2 (and held-out R^2) over the threshold grid, train accuracy's R^2 as a horizontal
    line, the chosen threshold as a vertical one."""
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(5.8, 4))
    x = sweep["threshold_loglog"].to_numpy()
    r2 = sweep["r2"].to_numpy()
    ax.plot(x, r2, "-", c="C0", label="PreMemAcc R$^2$" + (" (calibration runs)" if "r2_heldout" in sweep else ""))
    if "r2_heldout" in sweep and np.isfinite(sweep["r2_heldout"]).any():
        ax.plot(x, sweep["r2_heldout"], "-", c="C2", label="PreMemAcc R$^2$ (held-out runs)")
    tr = summary["train_acc_r2"]
    vals = np.concatenate([r2[np.isfinite(r2)], [tr] if tr is not None else []])
    lo = max(-1.0, float(vals.min())) - 0.05 if vals.size else -1.05
    if tr is not None and tr < lo:  # off the chart: drawn on its lower edge and said so
        ax.axhline(lo + 0.01, c="C3", ls=":", marker="v", markevery=[1], label=f"train accuracy R$^2$ ({tr:.3f}, below the axis)")
    elif tr is not None:
        ax.axhline(tr, c="C3", ls=":", label=f"train accuracy R$^2$ ({tr:.3f})")
    below = int((r2[np.isfinite(r2)] < lo).sum())
    if below:
        ax.text(0.98, 0.03, f"PreMemAcc R$^2$ below {lo:.2f} at {below} threshold(s)", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color="C0")
    ax.axvline(summary["threshold_loglog"], c="k", ls="--", lw=1,
               label=f"chosen {summary['threshold_loglog']:.2f} (ppl {summary['threshold_ppl']:.4g})")
    ax.set_ylim(lo, 1.02)
    ax.set_xlabel("memorization threshold log(log(perplexity))")
    ax.set_ylabel("R$^2$ (test acc vs y = x)")
    note = "\n(not meaningful: " + summary["r2_note"].split(":")[0] + ")" if summary.get("r2_note") else ""
    ax.set_title("R$^2$ against the memorization threshold" + note)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    return fig
