"""`premem.py analyze`: PreMemAcc of every run and checkpoint, the threshold, tables and figures.

analyze() writes to its output folder:
    summary.json                   threshold, R^2 / Pearson r, runs, points, sweep, files, timing_s
    points.csv                     one row per run and checkpoint: mean PreMemAcc, train and test accuracy
    sweep.csv                      R^2 and Pearson r per loglog grid threshold
    premem_examples.parquet/.csv   per example at each run's last checkpoint (example_table)
    figures/                       fig1, fig3, fig4, r2_vs_threshold (.png, .pdf)

Threshold: given (loglog or perplexity), or calibrated on the runs matching `calibrate_on` (then the
summary also gives R^2 on the other, held-out runs), or on all runs (calibration.py).

Points: Figure 4's by default (every checkpoint of a full run; a half or quarter run at one third, two
thirds and the end of its training, as the authors plot them: calibration.figure4_points); with
all_checkpoints every checkpoint with a test record (the kit's earlier rule). PreMemAcc's running max is
over every checkpoint either way.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from premem_kit.analysis.defaults import DEFAULT_FRAGILE_T
from premem_kit.analysis.analysis_figures import choose_fig3_run, make_figures
from premem_kit.analysis.bootstrap import DEFAULT_RESAMPLES, question_bootstrap
from premem_kit.analysis.calibration import (best_threshold, default_grid, figure4_points, given_threshold, match_runs,
                                             points_table, sweep_runs, sweep_table)
from premem_kit.core.errors import warn
from premem_kit.core.figures import fmt
from premem_kit.core.files import atomic_write_json, atomic_write_parquet, atomic_write_text, json_safe
from premem_kit.metric import pearson_r, ppl_from_loglog, premem_loglog, r2_identity
from premem_kit.analysis.rundata import AnalysisError, RunData, load_runs

CONVENTION = (
    "memorized <=> perplexity < threshold_ppl <=> log(log(perplexity)) < threshold_loglog; "
    "PreMemAcc_m = min(max_{1<=m'<=m} acc_m' * 1[not memorized_m'], acc_m) over trained checkpoints; "
    "step 0 (the base model) counts as a checkpoint only with include_step0"
)
POINTS_RULE = "figure 4: half and quarter runs at 1/3, 2/3 and the end of training"
TABLE_FILES = ["summary.json", "points.csv", "sweep.csv", "premem_examples.parquet", "premem_examples.csv"]


def analyze(
    run_dirs,
    out,
    *,
    threshold_loglog: float | None = None,
    threshold_ppl: float | None = None,
    calibrate_on=None,
    grid=None,
    fragile_t: float = DEFAULT_FRAGILE_T,
    variant: str = "original",
    include_step0: bool = False,
    figures: bool = True,
    fig3_run: str | None = None,
    all_checkpoints: bool = False,
    bootstrap: int = DEFAULT_RESAMPLES,
    progress: bool = True,
    verbose: bool = True,
) -> dict:
    """Compute PreMemAcc for every run, choose/calibrate the threshold, write all outputs to `out`.

    Threshold: threshold_loglog or threshold_ppl if given; else calibrated on the runs matching
    `calibrate_on` (names, paths or fnmatch patterns), else on all runs. bootstrap: resamples of the
    questions for R^2's intervals (bootstrap.py; 0: none). Returns the summary dict (also written to
    out/summary.json).
    """
    clock = [time.perf_counter()]
    out = Path(out)
    check_options(threshold_loglog, threshold_ppl, calibrate_on, fragile_t)
    grid = default_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    runs = load_runs(run_dirs, variant=variant, include_step0=include_step0, progress=progress)
    check_one_task(runs)
    if figures and fig3_run is not None:
        choose_fig3_run(runs, fig3_run)  # a name that is not among the runs: refused before anything is written
    warn_mixed(runs)
    if not all_checkpoints:
        runs = figure4_points(runs)
    clock.append(time.perf_counter())

    calib_names = match_runs(runs, calibrate_on) if calibrate_on else {r.name for r in runs}
    sweep, n_cal = threshold_sweep(runs, grid, calib_names, heldout=bool(calibrate_on))
    if threshold_loglog is not None or threshold_ppl is not None:
        t, source = given_threshold(threshold_ppl, threshold_loglog), "given"
    else:
        t, source = best_threshold(sweep, n_cal), "calibrated"
    points = checkpoint_points(runs, t, calib_names)
    clock.append(time.perf_counter())

    summary = fit_summary(points, t, source, runs, calib_names if calibrate_on else None)
    summary["bootstrap"] = question_bootstrap(runs, t, calib_names if calibrate_on else None, bootstrap)
    summary.update(fragile_t=fragile_t, variant=variant, include_step0=include_step0,
                   points_rule="all checkpoints" if all_checkpoints else POINTS_RULE,
                   sweep_grid=dict(min=float(grid[0]), max=float(grid[-1]), points=int(grid.size)),
                   convention=CONVENTION, runs=[run_entry(r, r.name in calib_names) for r in runs],
                   points=points.to_dict(orient="records"), sweep=sweep.to_dict(orient="records"))
    write_tables(out, points, sweep, example_table(runs, t, fragile_t))
    clock.append(time.perf_counter())

    fig_files = make_figures(runs, points, sweep, summary, out / "figures", fig3_run=fig3_run) if figures else []
    clock.append(time.perf_counter())
    summary["files"] = TABLE_FILES + [str(Path("figures") / f) for f in fig_files]
    summary["timing_s"] = timing(clock)
    summary = json_safe(summary)
    atomic_write_json(out / "summary.json", summary)
    if verbose:
        print_summary(summary, out)
    return summary


def check_one_task(runs: list[RunData]) -> None:
    """One threshold and one fit are for one task (the paper: GSM8K -2.3, MATH -1.7); runs of several
    tasks together are refused, naming them."""
    by_task: dict[str, list[str]] = {}
    for r in runs:
        if r.setting("task") is not None:  # a run folder without config.yaml says nothing (warned about)
            by_task.setdefault(str(r.setting("task")), []).append(r.name)
    if len(by_task) > 1:
        listed = "; ".join(f"{t}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                           for t, names in sorted(by_task.items()))
        raise AnalysisError(f"the runs are of {len(by_task)} tasks ({listed}): a memorization threshold and an R² "
                            f"are fitted per task; analyze each task's runs separately")


def warn_mixed(runs: list[RunData]) -> None:
    """A warning when the runs were evaluated with different sampler settings or numbers of questions (their
    points are then not measured alike), or when a run has checkpoints without a test record (holes)."""
    from premem_kit.core import records, runs as runs_mod

    sampler = ("eval_samples", "eval_temperature", "eval_top_p", "eval_max_new_tokens")
    seen: dict[tuple, list[str]] = {}
    counts: list[tuple[str, int, bool]] = []  # (run, train questions evaluated, all of the run's train set)
    for r in runs:
        for _, split, variant, p in runs_mod.list_records(r.path)[:2]:  # the first checkpoint's train and test files
            s = records.read_settings(p) or {}
            if not s:
                continue
            # A grid caps train questions per checkpoint; a run smaller than the cap is evaluated on all of
            # its train set, so its count differs by design and is compared below, not here.
            keys = sampler + (("examples",) if split == "test" else ())
            seen.setdefault((split, tuple((k, s.get(k)) for k in keys)), []).append(r.name)
            if split == "train" and s.get("examples") is not None:
                counts.append((r.name, int(s["examples"]), int(s["examples"]) >= train_set_size(r.path)))
    for split in ("train", "test"):
        kinds = {k: v for k, v in seen.items() if k[0] == split}
        if len(kinds) > 1:
            desc = "; ".join(f"{', '.join(f'{a}={b}' for a, b in k[1])} ({', '.join(names[:2])})"
                             for k, names in kinds.items())
            warn(f"the runs' {split} records were made with different settings: {desc}")
    if mixed_caps(counts):
        warn("the runs were evaluated on different numbers of their train questions: "
             + ", ".join(f"{n} {c}{' (all)' if whole else ''}" for n, c, whole in counts))
    holes = [f"{r.name} (steps {', '.join(str(s) for s in r.steps[np.isnan(r.test_acc)][:4])})"
             for r in runs if np.isnan(r.test_acc).any()]
    if holes:
        warn(f"checkpoints without a test record are in PreMemAcc's running max but are not points: {'; '.join(holes)}")


def train_set_size(run) -> float:
    """How many examples the run trains on (subset_ids.json); infinite when unknown, so no count is "all"."""
    from premem_kit.core import runs as runs_mod

    try:
        return len(runs_mod.read_train_ids(run))
    except runs_mod.RunError:
        return float("inf")


def mixed_caps(counts: list[tuple[str, int, bool]]) -> bool:
    """Whether no one cap on train questions per checkpoint explains the counts: a run that evaluated only
    part of its train set fixes the cap at its count, so another such count, or any larger count, differs."""
    caps = {c for _, c, whole in counts if not whole}
    return len(caps) > 1 or (len(caps) == 1 and any(c > min(caps) for _, c, _ in counts))


def check_options(threshold_loglog, threshold_ppl, calibrate_on, fragile_t) -> None:
    if sum(x is not None for x in (threshold_loglog, threshold_ppl, calibrate_on)) > 1:
        raise AnalysisError("give at most one of threshold_loglog, threshold_ppl, calibrate_on")
    if not 0 <= fragile_t <= 1:
        raise AnalysisError(f"fragile threshold must be in [0, 1], got {fragile_t}")


def threshold_sweep(runs: list[RunData], grid, calib_names: set[str], heldout: bool) -> tuple[pd.DataFrame, int]:
    """The sweep table (calibration.sweep_table) over every point with a test record, and the number
    of calibration points."""
    X, y, _, pnames = sweep_runs(runs, grid)
    if len(y) == 0:
        raise AnalysisError("no checkpoint has both train and test records: " + ", ".join(str(r.path) for r in runs))
    cal = np.isin(np.asarray(pnames, dtype=object), list(calib_names))
    return sweep_table(grid, X, y, cal, heldout_column=heldout), int(cal.sum())


def checkpoint_points(runs: list[RunData], t: float, calib_names: set[str]) -> pd.DataFrame:
    """calibration.points_table at threshold t, with a column saying which points calibrated it."""
    premem_means = [premem_loglog(r.acc, r.ll, t).mean(axis=1) for r in runs]
    points = points_table(runs, premem_means)
    points["calibration"] = points["run"].isin(calib_names)
    return points


def fit_summary(points: pd.DataFrame, t: float, source: str, runs: list[RunData],
                calib_names: set[str] | None) -> dict:
    """Threshold and fit statistics (R^2 against y = x, Pearson r) of PreMemAcc and of train accuracy;
    with calib_names (calibrate_on) also on the calibration and the held-out points."""
    px, py, ptr = points["premem_acc"].to_numpy(), points["test_acc"].to_numpy(), points["train_acc"].to_numpy()
    summary = dict(
        threshold_loglog=t,
        threshold_ppl=ppl_from_loglog(t),
        threshold_source=source,
        r2=r2_identity(py, px),
        pearson_r=pearson_r(py, px),
        train_acc_r2=r2_identity(py, ptr),
        train_acc_pearson_r=pearson_r(py, ptr),
        n_runs=len(runs),
        n_points=len(points),
    )
    summary["r2_note"] = r2_note(py)
    summary["r2_meaningful"] = summary["r2_note"] is None
    if calib_names is None:
        return summary
    c = points["calibration"].to_numpy()
    h = ~c
    summary.update(
        r2_calibration=r2_identity(py[c], px[c]),
        r2_heldout=r2_identity(py[h], px[h]) if h.any() else None,
        pearson_r_heldout=pearson_r(py[h], px[h]) if h.any() else None,
        train_acc_r2_heldout=r2_identity(py[h], ptr[h]) if h.any() else None,
        calibration_runs=sorted(calib_names),
        heldout_runs=sorted({r.name for r in runs} - calib_names),
    )
    if not h.any():
        warn("--calibrate-on matches every analyzed run; no held-out points")
    return summary


def run_entry(run: RunData, calibration: bool) -> dict:
    """A run as listed in summary.json."""
    return dict(run=run.name, path=str(run.path), lr=run.learning_rate, num_epochs=run.setting("num_epochs"),
                subset=run.setting("subset"), task=run.setting("task"), steps=run.steps.tolist(),
                n_train=int(run.acc.shape[1]), calibration=calibration)


def example_table(runs: list[RunData], t: float, fragile_t: float) -> pd.DataFrame:
    """Per-example table at each run's last checkpoint (one row per run x train example)."""
    frames = []
    for run in runs:
        ll = run.ll
        pm = premem_loglog(run.acc, ll, t)
        mem = ll < t
        first = np.where(mem.any(axis=0), run.steps[np.argmax(mem, axis=0)], -1)
        frames.append(
            pd.DataFrame(
                dict(
                    run=run.name,
                    id=run.ids.astype(str),
                    step=int(run.steps[-1]),
                    epoch=float(run.epochs[-1]),
                    premem_acc=pm[-1],
                    accuracy=run.acc[-1],
                    perplexity=run.ppl[-1],
                    max_accuracy=run.acc.max(axis=0),
                    memorized=mem[-1],
                    first_memorized_step=first.astype(np.int64),
                    fragile=pm[-1] < fragile_t,
                )
            )
        )
    return pd.concat(frames, ignore_index=True)


def write_tables(out: Path, points: pd.DataFrame, sweep: pd.DataFrame, examples: pd.DataFrame) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "points.csv", points.to_csv(index=False))
    atomic_write_text(out / "sweep.csv", sweep.to_csv(index=False))
    atomic_write_parquet(out / "premem_examples.parquet", examples)
    atomic_write_text(out / "premem_examples.csv", examples.to_csv(index=False))


def timing(clock: list[float]) -> dict:
    """Seconds per stage from the times taken after loading, the metric, the tables and the figures."""
    t0, t_load, t_metric, t_tables, t_end = clock
    return dict(load=t_load - t0, metric=t_metric - t_load, tables=t_tables - t_metric, figures=t_end - t_tables,
                total=t_end - t0)


MIN_R2_POINTS = 6  # below this, or with test accuracies this close together, R^2 measures noise
MIN_R2_SPREAD = 0.02


def r2_note(test_acc) -> str | None:
    """Why R^2 over these points is not meaningful (None when it is)."""
    y = np.asarray(test_acc, dtype=float)
    if y.size < MIN_R2_POINTS:
        return (f"only {y.size} (checkpoint, test accuracy) point(s): R^2 needs at least {MIN_R2_POINTS} "
                f"(the paper fits 40+); analyze more runs or checkpoints")
    if y.max() - y.min() < MIN_R2_SPREAD:
        return (f"test accuracies span only {y.max() - y.min():.3f}: R^2 divides by their variance, so it "
                f"measures noise; runs that differ in test accuracy are needed")
    return None


def print_points(points: pd.DataFrame, limit: int = 24) -> None:
    """Predicted (mean PreMemAcc) and actual test accuracy per run and checkpoint."""
    print(f"{'run':34s} {'step':>6} {'epoch':>6} {'train acc':>9} {'predicted':>9} {'test acc':>8}")
    for r in points.head(limit).itertuples():
        print(f"{str(r.run)[:34]:34s} {r.step:>6} {r.epoch:>6.2f} {r.train_acc:>9.3f} {r.premem_acc:>9.3f} "
              f"{r.test_acc:>8.3f}")
    if len(points) > limit:
        print(f"... {len(points) - limit} more rows in summary.json (points)")


def print_summary(s: dict, out: Path) -> None:
    """The threshold and the fit statistics of a summary, for the terminal."""
    print_points(pd.DataFrame(s["points"]))
    src = s["threshold_source"]
    if src == "calibrated":
        n_cal = len(s.get("calibration_runs") or s["runs"])
        src = f"calibrated on {n_cal} run(s), {s['sweep_grid']['points']}-point loglog grid"
    print(f"threshold: loglog {s['threshold_loglog']:.4f} = perplexity {s['threshold_ppl']:.5g}  ({src})")
    print(f"PreMemAcc vs test accuracy: R^2 = {fmt(s['r2'])}  Pearson r = {fmt(s['pearson_r'])}"
          f"  ({s['n_points']} points, {s['n_runs']} runs)")
    print(f"train accuracy vs test accuracy: R^2 = {fmt(s['train_acc_r2'])}"
          f"  Pearson r = {fmt(s['train_acc_pearson_r'])}")
    if s.get("r2_note"):
        print(f"note: these R^2 values are not meaningful: {s['r2_note']}")
    else:
        print("read: R^2 near 1 means mean PreMemAcc predicts test accuracy (points on y = x in figures/fig4.png);"
              " raw train accuracy's R^2 is the baseline it beats")
    if "r2_heldout" in s:
        print(f"calibration runs: R^2 = {fmt(s['r2_calibration'])}   held-out runs: R^2 = {fmt(s['r2_heldout'])}"
              f"  Pearson r = {fmt(s['pearson_r_heldout'])}   train accuracy R^2 = {fmt(s['train_acc_r2_heldout'])}")
    b = s.get("bootstrap") or {}
    if b and not s.get("r2_note"):
        def ci(k):
            return f"[{fmt(b[k][0])}, {fmt(b[k][1])}]" if k in b else "n/a"

        print(f"{b['level']:.0%} bootstrap intervals ({b['resamples']} resamples of the questions): R^2 {ci('r2')}, "
              f"train accuracy R^2 {ci('train_acc_r2')}"
              + (f"; held-out R^2 {ci('r2_heldout')}, train accuracy {ci('train_acc_r2_heldout')}"
                 if "r2_heldout" in s else ""))
    print(f"wrote {out}/summary.json, points.csv, sweep.csv, premem_examples.parquet/.csv"
          + (", figures/" if any(f.startswith("figures") for f in s["files"]) else ""))
