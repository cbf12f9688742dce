"""Figure 8 (`curate.py fig8`): Algorithm 1 once per strategy, test accuracy against the number of
training examples, and the sample-efficiency ratio of premem over iid.

One Algorithm 1 per strategy in OUT/<strategy>/ (algorithm1.py's layout), sharing round 0
(OUT/round-0/); writes OUT/fig8.json (points and the ratio) and OUT/fig8.{png,pdf}. The ratio is the
number of examples iid needs over the number premem needs for the same test accuracy, both curves made
monotone (running max) and interpolated linearly in log size; reported at premem's final accuracy and as
the geometric mean over premem's points inside iid's accuracy range.
"""
from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from premem_kit.tasks import data as data_mod
from premem_kit.core import figures
from premem_kit.curation.algorithm1 import (LoopOptions, Selection, Sources, ensure_ifd_scorer, n_new_list,
                                            run_algorithm1)
from premem_kit.curation.vocabulary import STRATEGIES
from premem_kit.core.files import atomic_write_json
from premem_kit.curation.selection import load_ifd_scorer
from premem_kit.core.config import Config

# ----------------------------------------------------------------------------- sample efficiency


def monotone_curve(ns, accs) -> tuple[np.ndarray, np.ndarray]:
    """The curve sorted by size, accuracy made non-decreasing (running max)."""
    o = np.argsort(ns)
    n = np.asarray(ns, dtype=float)[o]
    a = np.maximum.accumulate(np.asarray(accs, dtype=float)[o])
    return n, a


def examples_needed(ns, accs, target: float) -> float | None:
    """Smallest size at which the (running-max) curve reaches `target`, linear in log size between points;
    None when it never does or already exceeds it at its smallest size."""
    n, a = monotone_curve(ns, accs)
    if target > a[-1] + 1e-12 or target < a[0] - 1e-12:
        return None
    i = int(np.argmax(a >= target - 1e-12))
    if i == 0 or a[i] == a[i - 1]:
        return float(n[i])
    f = (target - a[i - 1]) / (a[i] - a[i - 1])
    return float(np.exp(np.log(n[i - 1]) + f * (np.log(n[i]) - np.log(n[i - 1]))))


def sample_efficiency_ratio(iid: tuple, prem: tuple) -> dict:
    """Examples iid needs / examples premem needs for the same test accuracy. iid, prem: (ns, accs)."""
    ni, ai = monotone_curve(*iid)
    npm, ap = monotone_curve(*prem)
    out = {"at_final": None, "geomean": None, "levels": [], "note": None}
    if ap.max() <= ap.min() and ai.max() <= ai.min():
        out["note"] = "both curves are flat: the ratio is undefined"
        return out
    final = float(ap[-1])
    need_i, need_p = examples_needed(ni, ai, final), examples_needed(npm, ap, final)
    if need_i is not None and need_p:
        out["at_final"] = need_i / need_p
    elif need_i is None and final > ai[-1]:
        out["note"] = (f"iid never reaches premem's final accuracy {final:.4f} (max {ai[-1]:.4f}): ratio > "
                       f"{ni[-1] / examples_needed(npm, ap, final):.3f}")
        out["lower_bound"] = float(ni[-1] / examples_needed(npm, ap, final))
    logs = []
    for a in sorted(set(ap.tolist())):
        if a <= max(ai[0], ap[0]) or a > ai[-1]:
            continue
        x, y = examples_needed(ni, ai, a), examples_needed(npm, ap, a)
        if x and y:
            out["levels"].append({"accuracy": a, "iid": x, "premem": y, "ratio": x / y})
            logs.append(math.log(x / y))
    if logs:
        out["geomean"] = float(math.exp(sum(logs) / len(logs)))
    elif out["note"] is None and out["at_final"] is None:
        out["note"] = "no accuracy level reached by both curves above their smallest size"
    return out


def curve_ratio(curves: dict) -> dict | None:
    """The sample-efficiency ratio of the iid and premem curves (None unless both were run)."""
    if "iid" not in curves or "premem" not in curves:
        return None
    return sample_efficiency_ratio(
        ([p["n_train"] for p in curves["iid"]], [p["test_accuracy"] for p in curves["iid"]]),
        ([p["n_train"] for p in curves["premem"]], [p["test_accuracy"] for p in curves["premem"]]))


# ----------------------------------------------------------------------------- the experiment


def run_fig8(base_cfg: Config, out, rounds: int, n_new, *, strategies=STRATEGIES, sources: Sources | None = None,
             selection: Selection | None = None, ifd_scorer_examples=None, draw=True) -> dict:
    """Algorithm 1 per strategy (shared round 0, rephrase cache and IFD scorer), the ratio, OUT/fig8.json
    and the figure. Returns fig8.json's content."""
    out = Path(out)
    sources = sources or Sources()
    seed_examples = sources.seed_examples if sources.seed_examples is not None else data_mod.train_examples(base_cfg)
    n_list = n_new_list(n_new, rounds, len(seed_examples))  # a bad --n-new fails before any training
    ifd_scorer = sources.ifd_scorer
    if "ifd" in strategies and ifd_scorer is None:
        ifd_scorer = ensure_ifd_scorer(base_cfg, out / "ifd-scorer", sources.train_fn, n=ifd_scorer_examples)
    shared = replace(sources, seed_examples=seed_examples, ifd_scorer=ifd_scorer, round0_dir=out / "round-0",
                     rephrase_cache=out / "rephrase_cache.jsonl")
    curves = {}
    t0 = time.time()
    for s in strategies:
        summ = run_algorithm1(base_cfg, out / s, s, rounds, n_list, shared, selection)
        curves[s] = [{"n_train": r["n_train"], "test_accuracy": r["test_accuracy"], "round": r["round"]}
                     for r in summ["rounds"]]
    res = {"model": base_cfg.model, "task": base_cfg.task, "data": base_cfg.data, "rounds": rounds,
           "n_new": n_list, "seed_examples": len(seed_examples), "curves": curves,
           "sample_efficiency_ratio": curve_ratio(curves), "test_examples": base_cfg.eval_test_examples,
           "seconds_this_session": round(time.time() - t0, 1)}
    atomic_write_json(out / "fig8.json", res)
    if draw:
        plot_fig8(res, out)
    return res


def run_fig8_command(cfg: Config, out, strategies, opts: LoopOptions, draw: bool = True) -> dict:
    """`curate.py fig8`: the pool, rephraser and IFD scorer from the options, then run_fig8."""
    selection = opts.selection(cfg.task)  # a bad --threshold-from fails first
    seed_examples = data_mod.train_examples(cfg)
    pool, pool_name = opts.collect.load_pool(cfg, [e["id"] for e in seed_examples])
    sources = Sources(seed_examples=seed_examples, collector=opts.collect.collector, pool=pool, pool_name=pool_name,
                      chat=opts.collect.chat(),
                      ifd_scorer=load_ifd_scorer(opts.ifd_scorer) if opts.ifd_scorer else None)
    return run_fig8(cfg, out, opts.rounds, opts.n_new, strategies=strategies, sources=sources, selection=selection,
                    ifd_scorer_examples=opts.ifd_scorer_examples, draw=draw)


# ----------------------------------------------------------------------------- the figure

STYLE = {"premem": ("tab:red", "o"), "iid": ("tab:gray", "s"), "ifd": ("tab:blue", "^"),
         "heuristic": ("tab:green", "D")}
LABELS = {"premem": "PreMemAcc (ours)", "iid": "i.i.d.", "ifd": "IFD"}


def ratio_text(r: dict | None) -> str:
    """The ratio as the figure's title says it."""
    r = r or {}
    val = r.get("at_final") or r.get("geomean")
    if val:
        return f"iid/premem examples = {val:.2f}x"
    if r.get("lower_bound"):
        return f"iid/premem > {r['lower_bound']:.2f}x"
    return "ratio undefined" if r else ""


def fig8_figure(res: dict):
    """Test accuracy against training examples (log axis), one line per strategy; the ratio in the title."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = figures.pyplot().subplots(figsize=(5.5, 4))
    for s, pts in res["curves"].items():
        c, m = STYLE.get(s, (None, "o"))
        ax.plot([p["n_train"] for p in pts], [p["test_accuracy"] for p in pts], marker=m, color=c,
                label=LABELS.get(s, s))
    ax.set_xscale("log")
    ax.set_xticks(sorted({p["n_train"] for pts in res["curves"].values() for p in pts}))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    accs = [p["test_accuracy"] for pts in res["curves"].values() for p in pts]
    ax.set_ylim(-0.02, max(0.1, max(accs, default=0) * 1.15))
    ax.set_xlabel("number of training examples")
    ax.set_ylabel("test accuracy")
    ratio = ratio_text(res.get("sample_efficiency_ratio"))
    ax.set_title(f"{res['task']}: {res['model'].rstrip('/').split('/')[-1]}" + (f" | {ratio}" if ratio else ""),
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_fig8(res: dict, folder, stem: str = "fig8") -> list[str]:
    """Draw Figure 8 and save folder/stem.{png,pdf}; returns the file names."""
    return figures.save(fig8_figure(res), folder, stem)
