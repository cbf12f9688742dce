"""`premem.py priors`: the earlier generalization metrics against the true generalization gap (Figure 5).

Per checkpoint of every run (step 0, the base model, has no checkpoint and is left out), the
metrics of prior_metrics.py: gradient variance, distance from initialization and ATC. The ATC
threshold is fitted as the authors' gsm8k_orig_line_baselines.ipynb (reasoning_data) fits it: on one
reference run's last checkpoint (default the run trained 3 epochs on the full train set at lr 2e-5, the
authors' reference, appendix B.3; 2e-4 for a LoRA run by the kit's QLoRA rule), so that the fraction of its
*train* examples whose greedy score is above it equals its test accuracy (--atc-fit-on test: its test
examples, the kit's earlier fit); every run's test accuracy is then predicted as the fraction of its train
examples whose greedy score is above it. The score is the greedy response's whole-sequence log-probability
(--atc-score token-mean: the per-token mean, the kit's earlier score).

Figure 5 plots each metric against the gap train accuracy - test accuracy, over all runs and
checkpoints, Pearson r in each panel title. ATC and PreMemAcc predict test accuracy, so they enter as
predicted gaps (train accuracy - prediction); gradient variance and distance enter as they are.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from premem_kit.core import figures
from premem_kit.analysis.defaults import ATC_REFERENCE, DEFAULT_GRAD_BATCHES, DEFAULT_GRAD_SEED
from premem_kit.analysis.calibration import run_threshold
from premem_kit.core.errors import warn
from premem_kit.core.files import atomic_write_json, atomic_write_text, json_safe
from premem_kit.metric import pearson_r, ppl_from_loglog, premem_loglog
from premem_kit.analysis.prior_metrics import (PriorsError, atc_fit_threshold, atc_predict, compute_run_priors,
                                               greedy_scores)
from premem_kit.analysis.rundata import RunData, load_runs

GREEDY_HINT = "python evaluate.py {run} --eval_splits {splits} --greedy"
QLORA_FACTOR = 10  # the kit's QLoRA rule: LoRA runs train at 10x the paper's full-finetuning learning rate
METRICS = (  # (column plotted on x, panel title)
    ("grad_variance", "gradient variance"),
    ("distance_from_init", "distance from initialization"),
    ("atc_gap", "ATC: train acc - predicted test acc"),
    ("premem_gap", "PreMemAcc: train acc - PreMemAcc"),
)
POINT_COLUMNS = ["run", "step", "epoch", "lr", "train_acc", "test_acc", "gap", "grad_variance",
                 "distance_from_init", "atc_pred_test_acc", "atc_gap", "premem_acc", "premem_gap"]


def is_reference(run: RunData) -> bool:
    """Is this the authors' ATC reference run: 3 epochs on the full train set at lr 2e-5 (appendix B.3;
    gsm8k_orig_line_baselines.ipynb fits on gsm8k_orig_3epochs_full2_lr2e-05_bs128), or at 2e-4 for a LoRA
    run (the kit's QLoRA rule). A run whose config has no lora_r (an imported published run) is full
    finetuning."""
    lr = run.learning_rate
    scale = QLORA_FACTOR if (run.setting("lora_r", 0) or 0) > 0 else 1
    want = ATC_REFERENCE["learning_rate"] * scale
    return (run.setting("subset") == ATC_REFERENCE["subset"] and run.setting("num_epochs") == ATC_REFERENCE["num_epochs"]
            and lr is not None and abs(lr - want) <= 1e-9 * want)


def pick_run(runs: list[RunData], spec: str | None) -> RunData:
    """The run named by spec (run name, folder name or path); when spec is None the authors' reference run
    (is_reference), or else the first run, with a warning."""
    if spec is None:
        ref = next((r for r in runs if is_reference(r)), None)
        if ref is None:
            warn(f"ATC: no run trained {ATC_REFERENCE['num_epochs']} epochs on the full train set at lr "
                 f"{ATC_REFERENCE['learning_rate']:g} (x{QLORA_FACTOR} for LoRA), the authors' reference; fitting "
                 f"on the first run, {runs[0].name} (--atc-reference RUN chooses)")
            return runs[0]
        return ref
    for r in runs:
        if spec in (r.name, r.path.name, str(r.path)) or (Path(spec).exists() and Path(spec).resolve() == r.path.resolve()):
            return r
    raise PriorsError(f"--atc-reference {spec!r} is none of the runs given: " + ", ".join(r.name for r in runs))


def fit_atc(ref: RunData, fit_on: str = "train", score: str = "sequence") -> dict:
    """The ATC threshold from the reference run's last checkpoint with test records and greedy records of
    the `fit_on` split: the fraction of that split's greedy scores above it equals the test accuracy."""
    for k in range(len(ref.steps) - 1, -1, -1):
        step = int(ref.steps[k])
        scores = greedy_scores(ref.path, step, fit_on, score)
        if scores is not None and not np.isnan(ref.test_acc[k]):
            t = atc_fit_threshold(scores, float(ref.test_acc[k]))
            return {"reference_run": ref.name, "reference_step": step, "reference_test_acc": float(ref.test_acc[k]),
                    "reference_is_authors": is_reference(ref), "fit_on": fit_on, "score": score,
                    "threshold": t, "reference_fraction_above": atc_predict(scores, t), "n_fit": int(scores.size)}
    raise PriorsError(
        f"{ref.path}: ATC reference run has no checkpoint with both test records and {fit_on} greedy records "
        f"({ref.path}/greedy/step-XXXXXX.{fit_on}.parquet); make them with:\n  "
        + GREEDY_HINT.format(run=ref.path, splits=" ".join(dict.fromkeys(["train", fit_on]))))


def priors_table(runs: list[RunData], t: float, atc: dict | None, cached: dict) -> pd.DataFrame:
    """One row per (run, checkpoint with test records and cached prior metrics): accuracies, the gap,
    and every metric (POINT_COLUMNS)."""
    rows = []
    for run in runs:
        pm = premem_loglog(run.acc, run.ll, t).mean(axis=1)
        train_acc = run.acc.mean(axis=1)
        for k, step in enumerate(run.steps.tolist()):
            if np.isnan(run.test_acc[k]) or step not in cached[run.name]:
                continue
            c = cached[run.name][step]
            sc = greedy_scores(run.path, step, "train", atc["score"]) if atc else None
            pred = atc_predict(sc, atc["threshold"]) if sc is not None else float("nan")
            rows.append({
                "run": run.name, "step": step, "epoch": float(run.epochs[k]),
                "lr": run.learning_rate, "train_acc": float(train_acc[k]),
                "test_acc": float(run.test_acc[k]), "gap": float(train_acc[k] - run.test_acc[k]),
                "grad_variance": c.get("grad_variance"), "distance_from_init": c.get("distance_from_init"),
                "atc_pred_test_acc": pred, "atc_gap": float(train_acc[k] - pred),
                "premem_acc": float(pm[k]), "premem_gap": float(train_acc[k] - pm[k]),
            })
    return pd.DataFrame(rows, columns=POINT_COLUMNS)


def pearson_by_metric(points: pd.DataFrame) -> dict:
    """{metric column: {"pearson_r": r with the gap, "n": points with both values}}."""
    out = {}
    for col, _ in METRICS:
        x = pd.to_numeric(points[col], errors="coerce").to_numpy(dtype=float)
        y = points["gap"].to_numpy(dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        out[col] = {"pearson_r": pearson_r(y[ok], x[ok]) if ok.sum() >= 2 else float("nan"), "n": int(ok.sum())}
    return out


def _r_text(v) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def fig5(points: pd.DataFrame, corr: dict):
    """One panel per metric (METRICS): the gap against the metric, a line per run over its checkpoints;
    y = x on the predicted-gap panels; Pearson r and n in each title."""
    plt = figures.pyplot()
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.8))
    cmap = plt.get_cmap("tab10")
    for ax, (col, title) in zip(axes, METRICS):
        for j, (name, g) in enumerate(points.groupby("run", sort=False)):
            x = pd.to_numeric(g[col], errors="coerce").to_numpy(dtype=float)
            ax.plot(x, g["gap"], "o-", color=cmap(j % 10), label=name, ms=5, lw=1)
        if col in ("atc_gap", "premem_gap"):
            v = pd.concat([pd.to_numeric(points[col], errors="coerce"), points["gap"]]).dropna()
            if len(v):
                figures.diagonal(ax, float(v.min()), float(v.max()))
        ax.set_title(f"{title}\nPearson r = {_r_text(corr[col]['pearson_r'])} (n={corr[col]['n']})", fontsize=9)
        ax.set_xlabel(f"predicted gap ({title.split(':')[0]})" if ":" in title else title)
        if col == "premem_gap":
            ax.set_facecolor("#f4f8ff")
    axes[0].set_ylabel("generalization gap (train acc - test acc)")
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def optional_atc(runs: list[RunData], atc_reference: str | None, fit_on: str = "train",
                 score: str = "sequence") -> dict | None:
    """fit_atc on the reference run; without an explicit reference a failure leaves ATC out (warning)."""
    try:
        return fit_atc(pick_run(runs, atc_reference), fit_on, score)
    except PriorsError as e:
        if atc_reference is not None:
            raise
        warn(f"ATC left out: {e}")
        return None


def run_priors(run_dirs, out, *, atc_reference=None, atc_fit_on="train", atc_score="sequence", threshold_loglog=None,
               threshold_ppl=None, threshold_from=None, calibrate=False, n_batches=DEFAULT_GRAD_BATCHES,
               batch_size=None, seed=DEFAULT_GRAD_SEED, grad_draw="first", grad_loss="example",
               exclude_embeddings=True, grad_variance=True, force=False, figures=True, progress=True,
               verbose=True) -> dict:
    """Everything `premem.py priors` does; returns the dict written to OUT/priors.json.

    Threshold of the PreMemAcc gap: given, read from an analyze summary.json (threshold_from), calibrated
    on these runs (calibrate), or else the task's, as the authors' Figure 5 (calibration.run_threshold).
    """
    out = Path(out)
    if n_batches < 2:
        raise PriorsError(f"--grad-batches must be at least 2 (a variance), got {n_batches}")
    runs = load_runs(run_dirs, variant="original", progress=progress)
    t, source = run_threshold(runs, threshold_loglog=threshold_loglog, threshold_ppl=threshold_ppl,
                              threshold_from=threshold_from, calibrate=calibrate)
    cached = {}
    for run in runs:
        cached[run.name] = compute_run_priors(run.path, n_batches=n_batches, batch_size=batch_size, seed=seed,
                                              grad_variance=grad_variance, force=force, progress=progress,
                                              draw=grad_draw, loss=grad_loss, exclude_embeddings=exclude_embeddings)
        if not cached[run.name]:
            warn(f"{run.path}: no complete checkpoint folder; no prior metrics for this run")
    atc = optional_atc(runs, atc_reference, atc_fit_on, atc_score)
    points = priors_table(runs, t, atc, cached)
    if points.empty:
        raise PriorsError("no checkpoint has a checkpoint folder, train records and test records: "
                          + ", ".join(str(r.path) for r in runs))
    if atc and points["atc_pred_test_acc"].isna().any():
        miss = sorted(set(points.loc[points["atc_pred_test_acc"].isna(), "run"]))
        warn(f"no train greedy records for some checkpoints of {miss}; make them with: "
             + GREEDY_HINT.format(run="RUN", splits="train"))
    corr = pearson_by_metric(points)
    result = json_safe({
        "threshold_loglog": t, "threshold_ppl": ppl_from_loglog(t), "threshold_source": source,
        "atc": atc, "pearson_r_vs_gap": corr,
        "gradient_variance": {"n_batches": n_batches, "batch_size": batch_size or "run's batch_size", "seed": seed,
                              "draw": grad_draw, "loss": grad_loss, "computed": grad_variance},
        "distance_from_init": "without the embedding and output layers" if exclude_embeddings else "all weights",
        "n_runs": len(runs), "n_points": len(points), "points": points.to_dict(orient="records"),
        "files": ["priors.json", "priors.csv"],
    })
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "priors.csv", points.to_csv(index=False))
    if figures:
        result["files"] += ["figures/" + n for n in save_fig5(points, corr, out / "figures")]
    atomic_write_json(out / "priors.json", result)
    if verbose:
        print_result(points, atc, corr, result, out)
    return result


def save_fig5(points: pd.DataFrame, corr: dict, folder: Path) -> list[str]:
    return figures.save(fig5(points, corr), folder, "fig5")


def print_result(points: pd.DataFrame, atc: dict | None, corr: dict, result: dict, out: Path) -> None:
    print(points.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    if atc:
        print(f"ATC threshold {atc['threshold']:.5g} ({atc['score']} score) fitted on {atc['reference_run']} step "
              f"{atc['reference_step']}'s {atc['fit_on']} examples (test acc {atc['reference_test_acc']:.3f}, fraction "
              f"above {atc['reference_fraction_above']:.3f})")
    print("Pearson r with the generalization gap: " + ", ".join(
        f"{col} {_r_text(corr[col]['pearson_r'])}" for col, _ in METRICS))
    print(f"wrote {out}/: " + ", ".join(result["files"]))
