"""Robustness of a train example's answer to a small change of the prompt (Kang et al., Figures 6-7).

    python premem.py robustness RUN --out DIR [--step N] [--threshold LOGLOG | --threshold-ppl P |
                                               --threshold-from SUMMARY_JSON] [--bins 0 0.25 0.5 0.75 1]

Needs the run's train records for the prompt variants (original, " First", " We know that" appended
after "Answer:"), which evaluate.py writes with

    python evaluate.py RUN --splits train --variants original first we_know_that

What it computes, at one checkpoint m (default: the last one with train records of every variant):
  * PreMemAcc[m, i] of every train example from the *original* records (only they carry the target
    perplexity), with the memorization threshold given or, by default, calibrated on this run as
    `premem.py analyze` does (prefer --threshold-from OUT/summary.json of an analyze over many runs);
  * examples binned by PreMemAcc: bin k = [edge_k, edge_k+1), the last bin closed [edge, 1];
  * per bin and variant the accuracy distribution (Figure 7: violins, the mean as a line) and the mean
    (table); the Spearman rank correlation (scipy) between PreMemAcc and the accuracy under each
    perturbed prompt, and under both pooled (mean of the two perturbed accuracies per example);
  * Figure 6-style panel: a few examples spread over the PreMemAcc range, the model's first sample
    under each prompt, marked correct or not.

Outputs (atomic): DIR/robustness_table.csv, DIR/robustness.json (table, correlations, threshold, step),
DIR/robustness_examples.csv (one row per example: PreMemAcc, bin, accuracy per variant),
DIR/fig6_examples.json, DIR/figures/fig7.{png,pdf}, DIR/figures/fig6.{png,pdf}.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

import premem
import records

PERTURBED = ("first", "we_know_that")
VARIANT_ORDER = ("original",) + PERTURBED
DEFAULT_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)
EVAL_HINT = "python evaluate.py {run} --splits train --variants original first we_know_that"


# ----------------------------------------------------------------------------- threshold (shared with priors.py)


def add_threshold_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", "--threshold-loglog", dest="threshold", type=float, metavar="LOGLOG",
                   help="memorization threshold on log(log(perplexity)) (as premem.py analyze --threshold)")
    g.add_argument("--threshold-ppl", type=float, metavar="P", help="memorization threshold on perplexity")
    g.add_argument("--threshold-from", type=Path, metavar="SUMMARY_JSON",
                   help="take threshold_loglog from a summary.json written by premem.py analyze")


def resolve_threshold(args, runs: list[premem.RunData]) -> tuple[float, str]:
    """(loglog threshold, where it came from). Default: calibrated on `runs` like analyze does."""
    if args.threshold is not None or args.threshold_ppl is not None:
        return premem._resolve_threshold(args.threshold_ppl, args.threshold), "given"
    if args.threshold_from is not None:
        p = Path(args.threshold_from)
        try:
            t = json.loads(p.read_text())["threshold_loglog"]
        except FileNotFoundError:
            raise premem.PremError(f"{p}: no such file (expected the summary.json of premem.py analyze)") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise premem.PremError(f"{p}: expected a JSON object with key threshold_loglog ({e})") from None
        if not isinstance(t, (int, float)):
            raise premem.PremError(f"{p}: threshold_loglog is {t!r}, expected a number")
        return float(t), f"from {p}"
    try:
        t, _ = premem.calibrate_threshold(runs)
    except premem.PremError as e:
        raise premem.PremError(f"{e}; give the threshold with --threshold / --threshold-ppl / --threshold-from") from None
    return t, "calibrated on " + ", ".join(r.name for r in runs)


# ----------------------------------------------------------------------------- the analysis


def bin_index(x, edges) -> np.ndarray:
    """Bin k holds edges[k] <= x < edges[k+1]; the last bin is closed on the right."""
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise premem.PremError(f"bin edges must be at least 2 increasing numbers, got {edges.tolist()}")
    x = np.asarray(x, dtype=np.float64)
    k = np.searchsorted(edges, x, side="right") - 1
    k = np.where(x == edges[-1], edges.size - 2, k)
    if ((k < 0) | (k > edges.size - 2)).any():
        bad = x[(k < 0) | (k > edges.size - 2)][0]
        raise premem.PremError(f"PreMemAcc {bad} lies outside the bin edges {edges.tolist()}")
    return k


def bin_labels(edges) -> list[str]:
    n = len(edges) - 1
    return [f"[{edges[k]:g}, {edges[k + 1]:g}" + ("]" if k == n - 1 else ")") for k in range(n)]


def spearman(x, y) -> float:
    """Spearman rank correlation (scipy, ties averaged); NaN when either side is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def variant_steps(run_dir) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for step, split, variant, _ in records.list_records(run_dir):
        if split == "train":
            out.setdefault(variant, set()).add(step)
    return out


def choose_step(run_dir, step=None) -> int:
    """The checkpoint to analyze: `step`, or the last one with train records of every variant."""
    run_dir = Path(run_dir)
    have = variant_steps(run_dir)
    missing = [v for v in VARIANT_ORDER if v not in have]
    if missing:
        raise premem.PremError(
            f"{run_dir}: no train records for prompt variant(s) {missing} "
            f"(expected {run_dir}/records/step-XXXXXX.train.<variant>.parquet); make them with:\n  "
            + EVAL_HINT.format(run=run_dir))
    common = set.intersection(*(have[v] for v in VARIANT_ORDER))
    if step is None:
        if not common:
            raise premem.PremError(
                f"{run_dir}: no checkpoint has train records of all of {list(VARIANT_ORDER)} "
                f"(steps per variant: { {v: sorted(have[v]) for v in VARIANT_ORDER} }); run:\n  "
                + EVAL_HINT.format(run=run_dir))
        return max(common)
    if step not in common:
        raise premem.PremError(
            f"{run_dir}: step {step} lacks train records for "
            f"{[v for v in VARIANT_ORDER if step not in have[v]]}; steps with all variants: {sorted(common)}; run:\n  "
            + EVAL_HINT.format(run=run_dir) + f" --steps {step}")
    return step


def example_frame(run: premem.RunData, step: int, t: float) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """One row per train example at `step`: id, premem_acc, acc_<variant>; plus the raw variant records."""
    k = int(np.flatnonzero(run.steps == step)[0])
    pm = premem._premem_ll(run.acc, run.ll, t)[k]
    df = pd.DataFrame({"id": run.ids.astype(str), "premem_acc": pm})
    raw = {}
    for v in VARIANT_ORDER:
        path = records.record_path(run.path, step, "train", v)
        try:
            r = records.read_records(path)
        except ValueError as e:
            raise premem.PremError(str(e)) from None
        if r["id"].duplicated().any():
            raise premem.PremError(f"{path}: duplicate ids")
        raw[v] = r.set_index("id")
        df[f"acc_{v}"] = df["id"].map(raw[v]["accuracy"])
    lost = df[[f"acc_{v}" for v in VARIANT_ORDER]].isna().any(axis=1)
    if lost.all():
        raise premem.PremError(f"{run.path}: the variant records at step {step} share no example ids with the original ones")
    if lost.any():
        premem._warn(f"{run.path}: {int(lost.sum())} examples lack a variant record at step {step}; left out")
        df = df[~lost].reset_index(drop=True)
    return df, raw


def robustness_table(df: pd.DataFrame, edges) -> tuple[pd.DataFrame, dict]:
    """Mean accuracy per PreMemAcc bin and variant, and the Spearman correlations."""
    df = df.copy()
    df["bin"] = bin_index(df["premem_acc"], edges)
    labels = bin_labels(edges)
    rows = []
    for k, lab in enumerate(labels):
        sub = df[df["bin"] == k]
        row = {"bin": lab, "lo": float(edges[k]), "hi": float(edges[k + 1]), "n": int(len(sub)),
               "mean_premem_acc": float(sub["premem_acc"].mean()) if len(sub) else float("nan")}
        for v in VARIANT_ORDER:
            row[f"acc_{v}"] = float(sub[f"acc_{v}"].mean()) if len(sub) else float("nan")
        rows.append(row)
    perturbed = df[[f"acc_{v}" for v in PERTURBED]].mean(axis=1)
    corr = {f"spearman_{v}": spearman(df["premem_acc"], df[f"acc_{v}"]) for v in VARIANT_ORDER}
    corr["spearman_perturbed_mean"] = spearman(df["premem_acc"], perturbed)
    return pd.DataFrame(rows), corr


def pick_examples(df: pd.DataFrame, k: int = 3) -> list[str]:
    """k example ids spread over the PreMemAcc range (lowest first); among equal PreMemAcc, those
    right under the original prompt first (they show a fragile answer best)."""
    if len(df) == 0 or k <= 0:
        return []
    order = df.sort_values(["premem_acc", "acc_original"], ascending=[True, False], kind="stable")
    pos = np.unique(np.linspace(0, len(order) - 1, min(k, len(order))).round().astype(int))
    return order["id"].iloc[pos].tolist()


def _questions(run: premem.RunData, ids) -> dict[str, str]:
    """Question text per id from the run's data, or {} when the data cannot be read."""
    try:
        import data as data_mod

        cfg = run.config
        pool = data_mod.load_split(cfg["task"], cfg["data"], "train", cfg.get("data_config"), cfg.get("math_levels"))
        by = {e["id"]: e["question"] for e in pool}
        return {i: by[i] for i in ids if i in by}
    except Exception as e:  # noqa: BLE001 - the panel still works with ids only
        premem._warn(f"{run.path}: questions not shown in fig6 ({type(e).__name__}: {str(e)[:120]})")
        return {}


def fig6_examples(run, df, raw, k=3) -> list[dict]:
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

COLORS = {"original": "#4c72b0", "first": "#dd8452", "we_know_that": "#55a868"}


def fig7(df: pd.DataFrame, edges, title: str):
    """Violins of accuracy per PreMemAcc bin x variant, mean as a line. Returns (fig, {(bin, variant): mean})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = bin_index(df["premem_acc"], edges)
    labels = bin_labels(edges)
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
    ax.legend(fontsize=8, loc="upper left", title="prompt (line: mean)", title_fontsize=8)
    return fig, means


def fig6(examples: list[dict], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


# ----------------------------------------------------------------------------- command


def run_robustness(run_dir, out, *, step=None, threshold_args=None, edges=DEFAULT_BINS, n_examples=3,
                   figures=True, verbose=True) -> dict:
    """Everything `premem.py robustness` does; returns the dict written to OUT/robustness.json."""
    import matplotlib.pyplot as plt

    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise premem.PremError(f"{run_dir}: not a folder")
    step = choose_step(run_dir, step)
    run = premem.load_run(run_dir, variant="original")
    if threshold_args is None:
        threshold_args = argparse.Namespace(threshold=None, threshold_ppl=None, threshold_from=None)
    t, source = resolve_threshold(threshold_args, [run])
    df, raw = example_frame(run, step, t)
    edges = [float(e) for e in edges]
    df["bin"] = bin_index(df["premem_acc"], edges)
    table, corr = robustness_table(df, edges)
    examples = fig6_examples(run, df, raw, n_examples)
    k = int(np.flatnonzero(run.steps == step)[0])
    result = premem._clean({
        "run": run.name, "path": str(run_dir), "step": int(step), "epoch": float(run.epochs[k]),
        "threshold_loglog": t, "threshold_ppl": premem.ppl_from_loglog(t), "threshold_source": source,
        "n_examples": int(len(df)), "bins": edges, **corr, "table": table.to_dict(orient="records"),
        "files": ["robustness.json", "robustness_table.csv", "robustness_examples.csv", "fig6_examples.json"],
    })
    out.mkdir(parents=True, exist_ok=True)
    records.atomic_write_text(out / "robustness_table.csv", table.to_csv(index=False))
    records.atomic_write_text(out / "robustness_examples.csv", df.to_csv(index=False))
    records.atomic_write_json(out / "fig6_examples.json", examples)
    if figures:
        title = (f"{run.name} step {step}: Spearman(PreMemAcc, acc) first {corr['spearman_first']:.3f}, "
                 f"we_know_that {corr['spearman_we_know_that']:.3f}, original {corr['spearman_original']:.3f}")
        f7, _ = fig7(df, edges, title)
        result["files"] += ["figures/" + n for n in premem._save_fig(f7, out / "figures", "fig7")]
        plt.close(f7)
        f6 = fig6(examples, f"{run.name} step {step}: first sample under each prompt")
        result["files"] += ["figures/" + n for n in premem._save_fig(f6, out / "figures", "fig6")]
        plt.close(f6)
    records.atomic_write_json(out / "robustness.json", result)
    if verbose:
        print(f"{run.name} step {step}, {len(df)} train examples; threshold loglog {t:.4f} ({source})")
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        print("Spearman(PreMemAcc, accuracy): " + ", ".join(
            f"{v} {corr['spearman_' + v]:.3f}" for v in VARIANT_ORDER)
            + f", perturbed mean {corr['spearman_perturbed_mean']:.3f}")
        print(f"wrote {out}/: " + ", ".join(result["files"]))
    return result


def add_parser(sub) -> None:
    p = sub.add_parser(
        "robustness", help="PreMemAcc bins vs accuracy under perturbed prompts (Figures 6-7)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN", help="run folder with train records of every prompt variant")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--step", type=int, help="checkpoint step (default: the last with every variant)")
    add_threshold_args(p)
    p.add_argument("--bins", type=float, nargs="+", default=list(DEFAULT_BINS), metavar="EDGE",
                   help="PreMemAcc bin edges (default %(default)s)")
    p.add_argument("--examples", type=int, default=3, help="examples in fig6 (default %(default)s)")
    p.add_argument("--no-figures", action="store_true")
    p.set_defaults(func=lambda a: run_robustness(a.run_dir, a.out, step=a.step, threshold_args=a, edges=a.bins,
                                                n_examples=a.examples, figures=not a.no_figures))


if __name__ == "__main__":
    sys.exit(premem.main(["robustness", *sys.argv[1:]]))
