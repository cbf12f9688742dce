"""`curate.py scaling`: SFT data scaling. One run per fraction of the train set (nested seeded subsets,
config key subset_fraction; with max_train_examples N set, fractions of those N examples) under
OUT/frac-<p>_<q>/, trained with training.run_training and evaluated on the test split at its last
checkpoint; fits accuracy = a * log2(n) + b and writes OUT/scaling.{json,png,pdf}. Finished runs and
existing records are skipped.

The accuracy is greedy by default, as Yuan et al. report it: one greedy (temperature 0) answer per test
question, written to the run's greedy record (runs.greedy_path; evaluation.EvalOptions(greedy=True)) and
read back from its `outcome` column; no sampled record is made. sampled=True (--sampled, the kit's
earlier behaviour) uses the sampled test record instead: the mean over questions of the fraction of the
eval_samples samples (temperature eval_temperature) that are correct. scaling.json says which
("accuracy": "greedy" | "sampled") and the figure's axis label too.
"""
from __future__ import annotations

import gc
import logging
from fractions import Fraction
from pathlib import Path

from premem_kit.core import config as config_mod
from premem_kit.core.config import Config
from premem_kit.tasks import data as data_mod
from premem_kit.core import figures
from premem_kit.core import runs
from premem_kit.core.errors import KitError
from premem_kit.core.files import atomic_write_json

log = logging.getLogger("curate")

REPORTED_EVAL_KEYS = ("eval_samples", "eval_temperature", "eval_top_p", "eval_max_new_tokens", "eval_test_examples")


class ScalingError(KitError, ValueError):
    """Bad `curate.py scaling` input, or a run that wrote no checkpoint."""


def fraction_tag(f: Fraction) -> str:
    """1/32 -> "1_32", 1 -> "1" (the run folder frac-<tag>)."""
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}_{f.denominator}"


def fraction_configs(cfg0: Config, fractions: list[Fraction], out: Path) -> list[Config]:
    """One config per fraction, run_dir OUT/frac-<tag>.

    The fractions are of the set cfg0 trains on. With a max_train_examples cap N, fraction f trains on
    the first int(N * f) of the N capped examples (max_train_examples = int(N * f)): a prefix of the
    same seeded order, so the subsets stay nested; without a cap, subset_fraction = f."""
    n_full = None
    if cfg0.max_train_examples:
        n_full = len(data_mod.train_examples(config_mod.updated(cfg0, "scaling", subset_fraction=None)))
    out_cfgs = []
    for f in fractions:
        size = {"subset_fraction": str(f)} if n_full is None else \
            {"subset_fraction": None, "max_train_examples": max(1, int(n_full * f))}
        out_cfgs.append(config_mod.updated(cfg0, f"scaling fraction {f}", run_dir=str(out / f"frac-{fraction_tag(f)}"),
                                           **size))
    return out_cfgs


def greedy_accuracy(run: Path, step: int) -> tuple[float, int]:
    """(fraction of correct greedy answers, number of questions) of a checkpoint's greedy test record."""
    import pandas as pd

    p = runs.greedy_path(run, step, "test")
    try:
        outcome = pd.read_parquet(p, columns=["outcome"])["outcome"]
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise ScalingError(f"{p}: cannot read the greedy record ({type(e).__name__}: {e})") from None
    if not len(outcome):
        raise ScalingError(f"{p}: an empty greedy record")
    return float((outcome == "correct").mean()), int(len(outcome))


def checkpoint_test_accuracy(run: Path, step: int, greedy: bool) -> tuple[float, int]:
    """(test accuracy, questions) of a checkpoint, evaluating what is missing: greedy (the greedy record
    only) or sampled (the sampled record of the original prompt)."""
    from premem_kit.evaluation.evaluation import EvalOptions, evaluate_run

    if greedy:
        evaluate_run(run, EvalOptions(settings={"eval_splits": ["test"], "eval_base_model": False}, steps=[step],
                                      greedy=True, sampled=False))
        gc.collect()
        return greedy_accuracy(run, step)
    rows = evaluate_run(run, EvalOptions(settings={"eval_splits": ["test"], "eval_base_model": False}, steps=[step]))
    gc.collect()
    row = next(r for r in rows if r["split"] == "test" and r["variant"] == "original" and r["step"] == step)
    return row["accuracy"], row["n"]


def train_and_test(cfg: Config, fraction: Fraction, greedy: bool = True) -> dict:
    """Train one fraction's run, evaluate its last checkpoint on the test split; its scaling point."""
    from premem_kit.training.trainer import run_training

    run = Path(cfg.run_dir)
    log.info("fraction %s: %s", fraction, run)
    summary = run_training(cfg)
    gc.collect()
    ckpts = runs.checkpoints(run)
    if not ckpts:
        raise ScalingError(f"{run}: training wrote no checkpoint")
    last, epoch, _ = ckpts[-1]
    acc, n_test = checkpoint_test_accuracy(run, last, greedy)
    n = len(runs.read_train_ids(run))
    log.info("fraction %s: n=%d %s test accuracy %.4f", fraction, n, "greedy" if greedy else "sampled", acc)
    return {"fraction": str(fraction), "fraction_value": float(fraction), "n_train": n, "run_dir": str(run),
            "step": last, "epoch": epoch, "test_accuracy": acc, "test_examples": n_test,
            "train_seconds": summary.get("seconds_this_session")}


def fit_log_linear(ns, accs) -> dict:
    """Least squares accuracy = a * log2(n) + b; a is the change per doubling of the data."""
    import numpy as np

    x = np.log2(np.asarray(ns, dtype=float))
    y = np.asarray(accs, dtype=float)
    if len(set(x.tolist())) < 2:
        raise ValueError("the fit needs at least two different data sizes")
    A = np.stack([x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(A, y, rcond=None)
    pred = a * x + b
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"a": float(a), "b": float(b), "slope_per_doubling": float(a),
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else None, "points": len(x)}


def accuracy_label(res: dict) -> str:
    """Which test accuracy scaling.json holds, in words (older files without the key were sampled)."""
    if res.get("accuracy", "sampled") == "greedy":
        return "greedy test accuracy"
    ev = res.get("eval") or {}
    return f"sampled test accuracy (T {ev.get('eval_temperature')}, {ev.get('eval_samples')} samples)"


def run_scaling(config, settings: dict, fractions: list[str], out=None, draw: bool = True,
                greedy: bool = True) -> dict:
    """Train and test every fraction (greedy accuracy, or sampled with greedy=False), fit the log-linear
    law, write OUT/scaling.json (+ figure). Returns scaling.json's content."""
    cfg0 = config_mod.load_config(config, settings)
    fs = sorted({config_mod.parse_fraction(x) for x in fractions})
    if not fs:
        raise ScalingError("--fractions needs at least one fraction, e.g. 1/32 1/16 1")
    out = Path(out) if out else Path(cfg0.run_dir)
    points = [train_and_test(cfg, f, greedy) for f, cfg in zip(fs, fraction_configs(cfg0, fs, out))]
    ns = [p["n_train"] for p in points]
    if len(set(ns)) < len(ns):
        log.warning("some fractions train on the same number of examples (%s): too few train examples "
                    "for these fractions", ns)
    fit = None
    if len(set(ns)) >= 2:
        fit = fit_log_linear(ns, [p["test_accuracy"] for p in points])
    res = {"config": str(config), "overrides": dict(settings or {}), "out": str(out), "points": points, "fit": fit,
           "model": "test_accuracy = a * log2(n_train) + b (least squares); a = change per doubling",
           "accuracy": "greedy" if greedy else "sampled", "eval": {k: getattr(cfg0, k) for k in REPORTED_EVAL_KEYS}}
    atomic_write_json(out / "scaling.json", res)
    if draw:
        plot_scaling(res, out, "scaling")
    return res


def scaling_figure(res: dict):
    """Test accuracy against train examples (log2 axis) with the fitted line."""
    import numpy as np

    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ns = [p["n_train"] for p in res["points"]]
    ax.plot(ns, [p["test_accuracy"] for p in res["points"]], "o", label="runs")
    if res["fit"]:
        x = np.linspace(min(ns), max(ns), 100)
        f = res["fit"]
        ax.plot(x, f["a"] * np.log2(x) + f["b"], "-", label=f"{f['a']:+.4f} log2(n) {f['b']:+.4f}")
        ax.set_title(f"slope {f['slope_per_doubling']:+.4f} accuracy per doubling")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("train examples n")
    ax.set_ylabel(accuracy_label(res))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_scaling(res: dict, folder, stem: str = "scaling") -> list[str]:
    """Draw and save folder/stem.{png,pdf}; returns the file names."""
    return figures.save(scaling_figure(res), folder, stem)
