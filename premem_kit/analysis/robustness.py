"""`premem.py robustness`: how a train example's answer survives a small change of the prompt
(Kang et al., Figures 6-7).

At one checkpoint (default: the last one with train records of every prompt variant), every train
example gets its PreMemAcc from the original-prompt records (only they carry the target perplexity) at
the task's fixed memorization threshold (GSM8K -2.3, MATH -1.7, as the authors' Figure 7); examples are
binned by PreMemAcc, as the authors (gsm8k_orig_perplexity_gpt4o.ipynb): bins [0, 0.2), [0.2, 0.4), ...,
[0.8, 1) and a bin of its own for PreMemAcc = 1 (bin_for_one; without it the last bin is closed [e, 1]).
Per bin and variant the accuracy distribution (Figure 7: violins, mean as a line) and mean (table) are
reported, with the Spearman rank correlation between PreMemAcc and the accuracy under each prompt.
Figure 6 shows a few examples spread over the PreMemAcc range and the model's first sample under each
prompt. The variant records come from `python evaluate.py RUN --eval_splits train --eval_variants first
we_know_that --eval_samples 10 --steps STEP` (the authors sample 10 answers per prompt for Figure 7).
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from premem_kit.core import figures
from premem_kit.core import records
from premem_kit.core import runs
from premem_kit.analysis.defaults import DEFAULT_BIN_FOR_ONE, DEFAULT_BINS, DEFAULT_FIG6_EXAMPLES, ROBUSTNESS_SAMPLES
from premem_kit.analysis.calibration import run_threshold
from premem_kit.core.errors import warn
from premem_kit.core.files import atomic_write_json, atomic_write_text, json_safe
from premem_kit.metric import ppl_from_loglog, premem_loglog
from premem_kit.analysis.rundata import AnalysisError, RunData, load_run

PERTURBED = ("first", "we_know_that")
VARIANT_ORDER = ("original",) + PERTURBED
EVAL_HINT = (f"python evaluate.py {{run}} --eval_splits train --eval_variants original first we_know_that "
             f"--eval_samples {ROBUSTNESS_SAMPLES}")
COLORS = {"original": "#4c72b0", "first": "#dd8452", "we_know_that": "#55a868"}
OUTPUT_FILES = ["robustness.json", "robustness_table.csv", "robustness_examples.csv", "fig6_examples.json"]


# ----------------------------------------------------------------------------- bins and correlations


def n_bins(edges, bin_for_one: bool = False) -> int:
    return len(edges) - 1 + bool(bin_for_one)


def bin_index(x, edges, bin_for_one: bool = False) -> np.ndarray:
    """Bin k holds edges[k] <= x < edges[k+1]. x equal to the last edge: in a bin of its own after the
    others (bin_for_one, the authors' bin for PreMemAcc = 1), else in the last bin (closed on the right)."""
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise AnalysisError(f"bin edges must be at least 2 increasing numbers, got {edges.tolist()}")
    x = np.asarray(x, dtype=np.float64)
    k = np.searchsorted(edges, x, side="right") - 1
    k = np.where(x == edges[-1], edges.size - (1 if bin_for_one else 2), k)
    last = n_bins(edges, bin_for_one) - 1
    if ((k < 0) | (k > last)).any():
        bad = x[(k < 0) | (k > last)][0]
        raise AnalysisError(f"PreMemAcc {bad} lies outside the bin edges {edges.tolist()}")
    return k


def bin_labels(edges, bin_for_one: bool = False) -> list[str]:
    n = len(edges) - 1
    labels = [f"[{edges[k]:g}, {edges[k + 1]:g}" + ("]" if k == n - 1 and not bin_for_one else ")")
              for k in range(n)]
    return labels + ([f"{edges[-1]:g}"] if bin_for_one else [])


def spearman(x, y) -> float:
    """Spearman rank correlation (scipy, ties averaged); NaN when either side is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


# ----------------------------------------------------------------------------- the records


def variant_steps(run_dir) -> dict[str, set[int]]:
    """The steps with train records, per prompt variant."""
    out: dict[str, set[int]] = {}
    for step, split, variant, _ in runs.list_records(run_dir):
        if split == "train":
            out.setdefault(variant, set()).add(step)
    return out


def choose_step(run_dir, step=None) -> int:
    """The checkpoint to analyze: `step`, or the last one with train records of every variant."""
    run_dir = Path(run_dir)
    have = variant_steps(run_dir)
    missing = [v for v in VARIANT_ORDER if v not in have]
    if missing:
        raise AnalysisError(
            f"{run_dir}: no train records for prompt variant(s) {missing} "
            f"(expected {run_dir}/records/step-XXXXXX.train.<variant>.parquet); make them with:\n  "
            + EVAL_HINT.format(run=run_dir))
    common = set.intersection(*(have[v] for v in VARIANT_ORDER))
    if step is None:
        if not common:
            raise AnalysisError(
                f"{run_dir}: no checkpoint has train records of all of {list(VARIANT_ORDER)} "
                f"(steps per variant: { {v: sorted(have[v]) for v in VARIANT_ORDER} }); run:\n  "
                + EVAL_HINT.format(run=run_dir))
        return max(common)
    if step not in common:
        raise AnalysisError(
            f"{run_dir}: step {step} lacks train records for "
            f"{[v for v in VARIANT_ORDER if step not in have[v]]}; steps with all variants: {sorted(common)}; run:\n  "
            + EVAL_HINT.format(run=run_dir) + f" --steps {step}")
    return step


def example_frame(run: RunData, step: int, t: float) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per train example at `step`: id, premem_acc, acc_<variant>; plus the raw variant records."""
    k = int(np.flatnonzero(run.steps == step)[0])
    pm = premem_loglog(run.acc, run.ll, t)[k]
    df = pd.DataFrame({"id": run.ids.astype(str), "premem_acc": pm})
    raw = {}
    for v in VARIANT_ORDER:
        path = runs.record_path(run.path, step, "train", v)
        r = records.read_records(path)
        if r["id"].duplicated().any():
            raise AnalysisError(f"{path}: duplicate ids")
        raw[v] = r.set_index("id")
        df[f"acc_{v}"] = df["id"].map(raw[v]["accuracy"])
    lost = df[[f"acc_{v}" for v in VARIANT_ORDER]].isna().any(axis=1)
    if lost.all():
        raise AnalysisError(f"{run.path}: the variant records at step {step} share no example ids with the original ones")
    if lost.any():
        warn(f"{run.path}: {int(lost.sum())} examples lack a variant record at step {step}; left out")
        df = df[~lost].reset_index(drop=True)
    return df, raw


def robustness_table(df: pd.DataFrame, edges, bin_for_one: bool = False) -> tuple[pd.DataFrame, dict]:
    """Mean accuracy per PreMemAcc bin and variant, and the Spearman correlations."""
    df = df.copy()
    df["bin"] = bin_index(df["premem_acc"], edges, bin_for_one)
    rows = []
    bounds = [(edges[k], edges[k + 1]) for k in range(len(edges) - 1)] + ([(edges[-1], edges[-1])] if bin_for_one else [])
    for k, lab in enumerate(bin_labels(edges, bin_for_one)):
        sub = df[df["bin"] == k]
        row = {"bin": lab, "lo": float(bounds[k][0]), "hi": float(bounds[k][1]), "n": int(len(sub)),
               "mean_premem_acc": float(sub["premem_acc"].mean()) if len(sub) else float("nan")}
        for v in VARIANT_ORDER:
            row[f"acc_{v}"] = float(sub[f"acc_{v}"].mean()) if len(sub) else float("nan")
        rows.append(row)
    perturbed = df[[f"acc_{v}" for v in PERTURBED]].mean(axis=1)
    corr = {f"spearman_{v}": spearman(df["premem_acc"], df[f"acc_{v}"]) for v in VARIANT_ORDER}
    corr["spearman_perturbed_mean"] = spearman(df["premem_acc"], perturbed)
    return pd.DataFrame(rows), corr


# ----------------------------------------------------------------------------- Figure 6 examples


def pick_examples(df: pd.DataFrame, k: int = 3) -> list[str]:
    """k example ids spread over the PreMemAcc range (lowest first); among equal PreMemAcc, those
    right under the original prompt first (they show a fragile answer best)."""
    if len(df) == 0 or k <= 0:
        return []
    order = df.sort_values(["premem_acc", "acc_original"], ascending=[True, False], kind="stable")
    pos = np.unique(np.linspace(0, len(order) - 1, min(k, len(order))).round().astype(int))
    return order["id"].iloc[pos].tolist()


def _questions(run: RunData, ids) -> dict[str, str]:
    """Question text per id from the run's data, or {} when the data cannot be read."""
    try:
        from premem_kit.tasks import data as data_mod

        from premem_kit.core import runs as runs_mod

        pool = data_mod.load_split(runs_mod.read_config(run.path), "train")
        by = {e["id"]: e["question"] for e in pool}
        return {i: by[i] for i in ids if i in by}
    except Exception as e:  # noqa: BLE001 - the panel still works with ids only
        warn(f"{run.path}: questions not shown in fig6 ({type(e).__name__}: {str(e)[:120]})")
        return {}


def fig6_examples(run: RunData, df: pd.DataFrame, raw: dict, k: int = DEFAULT_FIG6_EXAMPLES) -> list[dict]:
    """The Figure 6 panel's examples: id, PreMemAcc, question, and per variant the first sample."""
    ids = pick_examples(df, k)
    qs = _questions(run, ids)
    out = []
    for i in ids:
        row = df.set_index("id").loc[i]
        ex = {"id": i, "premem_acc": float(row["premem_acc"]), "question": qs.get(i), "variants": []}
        for v in VARIANT_ORDER:
            r = raw[v].loc[i]
            ex["variants"].append({"variant": v, "suffix": records.VARIANTS[v], "accuracy": float(r["accuracy"]),
                                   "sample": str(r["samples"][0]), "outcome": str(r["outcomes"][0])})
        out.append(ex)
    return out


# ----------------------------------------------------------------------------- figures


def fig7(df: pd.DataFrame, edges, title: str, bin_for_one: bool = False):
    """Violins of accuracy per PreMemAcc bin x variant, mean as a line. Returns (fig, {(bin, variant): mean})."""
    plt = figures.pyplot()
    bins = bin_index(df["premem_acc"], edges, bin_for_one)
    labels = bin_labels(edges, bin_for_one)
    fig, ax = plt.subplots(figsize=(1.9 * len(labels) + 2, 4))
    w = 0.8 / len(VARIANT_ORDER)
    means = {}
    for j, v in enumerate(VARIANT_ORDER):
        data, pos = [], []
        for k in range(len(labels)):
            vals = df[f"acc_{v}"].to_numpy()[bins == k]
            if vals.size:
                data.append(vals)
                pos.append(k + (j - (len(VARIANT_ORDER) - 1) / 2) * w)
                means[(k, v)] = float(vals.mean())
        if not data:
            continue
        parts = ax.violinplot(data, positions=pos, widths=w * 0.9, showmeans=True, showextrema=False)
        for b in parts["bodies"]:
            b.set_facecolor(COLORS[v])
            b.set_alpha(0.55)
        parts["cmeans"].set_color("k")
        ax.scatter([], [], color=COLORS[v], label=f"{v} (\"{records.VARIANTS[v].strip()}\")" if v != "original" else v)
    counts = np.bincount(bins, minlength=len(labels))
    ax.set_xticks(range(len(labels)), [f"{lab}\nn={c}" for lab, c in zip(labels, counts)])
    ax.set_xlabel("PreMemAcc bin (original prompt)")
    ax.set_ylabel("accuracy under the prompt")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title, fontsize=9)
    # outside the axes: inside, it hides the violins of bins whose accuracies sit near 1
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False,
              title="prompt (line: mean)", title_fontsize=8)
    return fig, means


def fig6(examples: list[dict], title: str):
    """A grid of text panels: one row per example, one column per prompt variant (its first sample)."""
    plt = figures.pyplot()
    nv = len(VARIANT_ORDER)
    fig, axes = plt.subplots(len(examples), nv, figsize=(4.2 * nv, 3.2 * max(1, len(examples))), squeeze=False)
    for r, ex in enumerate(examples):
        q = (ex["question"] or ex["id"])[:300]
        for c, var in enumerate(ex["variants"]):
            ax = axes[r, c]
            ax.set_axis_off()
            ok = var["outcome"] == "correct"
            head = (f"{ex['id']}  PreMemAcc {ex['premem_acc']:.2f}\n" + textwrap.fill(q, 58) + "\n\n") if c == 0 else ""
            prompt = f"Answer:{var['suffix']}"
            body = textwrap.fill(" ".join(var["sample"].split())[:420], 58)
            ax.text(0, 1, head + f"[{var['variant']}] ...{prompt}\n" + body, va="top", ha="left", fontsize=6.5,
                    family="monospace", transform=ax.transAxes, parse_math=False)  # "$" is not mathtext
            ax.set_title(f"{var['variant']}: {'correct' if ok else var['outcome']} (acc {var['accuracy']:.2f})",
                         fontsize=8, color="#1a7f37" if ok else "#c0392b")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the command


def samples_per_prompt(raw: dict) -> dict[str, int]:
    """The number of samples per prompt of each variant's records (the most common count)."""
    return {v: int(r["outcomes"].map(len).mode().iloc[0]) if len(r) else 0 for v, r in raw.items()}


def run_robustness(run_dir, out, *, step=None, threshold_loglog=None, threshold_ppl=None, threshold_from=None,
                   calibrate=False, edges=DEFAULT_BINS, bin_for_one=DEFAULT_BIN_FOR_ONE,
                   n_examples=DEFAULT_FIG6_EXAMPLES, figures=True, verbose=True) -> dict:
    """Everything `premem.py robustness` does; returns the dict written to OUT/robustness.json.

    Threshold: given (loglog or perplexity), read from an analyze summary.json (threshold_from), calibrated
    on this run (calibrate, the kit's earlier default), or else the task's (calibration.run_threshold).
    """
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise AnalysisError(f"{run_dir}: not a folder")
    step = choose_step(run_dir, step)
    run = load_run(run_dir, variant="original")
    t, source = run_threshold([run], threshold_loglog=threshold_loglog, threshold_ppl=threshold_ppl,
                              threshold_from=threshold_from, calibrate=calibrate)
    df, raw = example_frame(run, step, t)
    edges = [float(e) for e in edges]
    df["bin"] = bin_index(df["premem_acc"], edges, bin_for_one)
    table, corr = robustness_table(df, edges, bin_for_one)
    samples = samples_per_prompt(raw)
    if min(samples[v] for v in PERTURBED) < ROBUSTNESS_SAMPLES:
        warn(f"{run_dir}: {samples} samples per prompt; the authors' Figure 7 uses {ROBUSTNESS_SAMPLES} "
             f"(evaluate.py --eval_samples {ROBUSTNESS_SAMPLES})")
    examples = fig6_examples(run, df, raw, n_examples)
    k = int(np.flatnonzero(run.steps == step)[0])
    result = json_safe({
        "run": run.name, "path": str(run_dir), "step": int(step), "epoch": float(run.epochs[k]),
        "threshold_loglog": t, "threshold_ppl": ppl_from_loglog(t), "threshold_source": source,
        "n_examples": int(len(df)), "bins": edges, "bin_for_one": bool(bin_for_one),
        "samples_per_prompt": samples, **corr, "table": table.to_dict(orient="records"),
        "files": list(OUTPUT_FILES),
    })
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "robustness_table.csv", table.to_csv(index=False))
    atomic_write_text(out / "robustness_examples.csv", df.to_csv(index=False))
    atomic_write_json(out / "fig6_examples.json", examples)
    if figures:
        result["files"] += write_figures(out / "figures", run.name, step, df, edges, corr, examples, bin_for_one)
    atomic_write_json(out / "robustness.json", result)
    if verbose:
        print_result(result, table, corr, out)
    return result


def write_figures(folder: Path, name: str, step: int, df: pd.DataFrame, edges, corr: dict,
                  examples: list[dict], bin_for_one: bool = False) -> list[str]:
    """fig7 and fig6 (PNG + PDF) into folder; returns their paths relative to the output folder."""
    title = (f"{name} step {step}: Spearman(PreMemAcc, acc) first {corr['spearman_first']:.3f}, "
             f"we_know_that {corr['spearman_we_know_that']:.3f}, original {corr['spearman_original']:.3f}")
    f7, _ = fig7(df, edges, title, bin_for_one)
    names = figures.save(f7, folder, "fig7")
    names += figures.save(fig6(examples, f"{name} step {step}: first sample under each prompt"), folder, "fig6")
    return ["figures/" + n for n in names]


def print_result(result: dict, table: pd.DataFrame, corr: dict, out: Path) -> None:
    print(f"{result['run']} step {result['step']}, {result['n_examples']} train examples; threshold loglog "
          f"{result['threshold_loglog']:.4f} ({result['threshold_source']}); samples per prompt "
          + ", ".join(f"{v} {n}" for v, n in result["samples_per_prompt"].items()))
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print("Spearman(PreMemAcc, accuracy): " + ", ".join(
        f"{v} {corr['spearman_' + v]:.3f}" for v in VARIANT_ORDER)
        + f", perturbed mean {corr['spearman_perturbed_mean']:.3f}")
    print(f"wrote {out}/: " + ", ".join(result["files"]))
