"""The generalization metrics proposed before PreMemAcc (Kang et al., appendix B; Figure 5).

    python premem.py priors RUN [RUN ...] --out DIR [--atc-reference RUN] [--threshold LOGLOG |
                            --threshold-ppl P | --threshold-from SUMMARY_JSON]
                            [--grad-batches 5] [--grad-batch-size B] [--seed 0] [--force]

Per checkpoint of every run (step 0, the base model, has no checkpoint and is left out):

gradient variance
    The gradient of the training loss (mean cross-entropy over the target tokens, as train.py) with
    respect to the trainable parameters (the LoRA A and B matrices; every weight when lora_r = 0) on
    --grad-batches (5) minibatches of --grad-batch-size (default: the run's batch_size) train examples,
    each a seeded random draw from the run's train set (the same draws at every checkpoint). The
    elementwise variance across the 5 gradients (population variance, i.e. divided by 5), averaged over
    all elements. Dropout is off (eval mode), so identical minibatches give exactly 0.
distance from initialization
    The sum over all weights of the squared change from the initial model. With LoRA the initial
    adapter is B = 0, so it is the squared Frobenius norm of the merged change, summed over adapted
    layers: sum ||s * B @ A||^2 with s = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA), computed
    from the r x r Gram matrices, ||BA||^2 = tr((B^T B)(A A^T)), straight from the adapter file (no base
    model, no full matrix). With lora_r = 0, the sum of squared differences to the base weights.
ATC (Average Thresholded Confidence)
    The score of an example is the likelihood of the model's greedy response (evaluate.py --greedy:
    RUN/records/greedy-step-XXXXXX.<split>.parquet, column likelihood). A threshold is fitted on one
    reference run (--atc-reference, default the first run; the paper uses the 3-epoch, lr 2e-5 run) at
    its last checkpoint with test greedy records: the fraction of its test examples whose score is above
    the threshold equals its test accuracy (the sampled accuracy of its test records). Every run's test
    accuracy at every checkpoint is then predicted as the fraction of its train examples whose score is
    above that threshold.

Figure 5 plots each metric against the true generalization gap, train accuracy - test accuracy (both
the mean sampled accuracy of the original-prompt records), over all runs and checkpoints, Pearson r in
each panel title. ATC and PreMemAcc predict test accuracy, so they enter as predicted gaps:
train accuracy - ATC prediction, and train accuracy - mean PreMemAcc (the threshold as in
`premem.py analyze`: given, or calibrated on the runs given here). Gradient variance and distance enter
as they are.

Per-checkpoint gradient variance and distance are cached in RUN/priors/step-XXXXXX.json (written
atomically, with the settings they were computed with); a rerun with the same settings skips them
(--no-grad-variance reuses any cached distance), --force recomputes. Outputs: DIR/priors.csv and
DIR/priors.json (points, Pearson r per metric, ATC threshold and reference), DIR/figures/fig5.{png,pdf}.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

import premem
import records
import robustness

GREEDY_HINT = "python evaluate.py {run} --splits train test --greedy"


# ----------------------------------------------------------------------------- distance from initialization


def _pattern_value(pattern: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name ending in '.key'."""
    for key, val in (pattern or {}).items():
        if re.match(rf"(.*\.)?{key}$", module):
            return val
    return default


def read_adapter(adapter_dir) -> tuple[dict, dict]:
    """(adapter_config.json, {tensor name: tensor}) of a saved PEFT LoRA adapter."""
    import torch

    d = Path(adapter_dir)
    cfg_path = d / "adapter_config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path}: missing; {d} is not a LoRA adapter folder")
    acfg = json.loads(cfg_path.read_text())
    if acfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{cfg_path}: peft_type {acfg.get('peft_type')!r}, expected LORA")
    if acfg.get("use_dora"):
        raise ValueError(f"{cfg_path}: DoRA adapters are not supported (the merged change is not s*B@A)")
    if (d / "adapter_model.safetensors").exists():
        from safetensors.torch import load_file

        sd = load_file(str(d / "adapter_model.safetensors"))
    elif (d / "adapter_model.bin").exists():
        sd = torch.load(d / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{d}: no adapter_model.safetensors or adapter_model.bin")
    return acfg, sd


def lora_distance(adapter_dir) -> float:
    """sum over adapted layers of ||s * B @ A||_F^2 = s^2 tr((B^T B)(A A^T)), from the adapter file."""
    acfg, sd = read_adapter(adapter_dir)
    total = 0.0
    n = 0
    for key, A in sd.items():
        m = re.match(r"^(.*)\.lora_(embedding_)?A(\.[^.]+)?(\.weight)?$", key)
        if not m:
            continue
        bkey = key.replace(f"lora_{m.group(2) or ''}A", f"lora_{m.group(2) or ''}B", 1)
        if bkey not in sd:
            raise ValueError(f"{adapter_dir}: {key} has no matching {bkey}")
        A, B = A.double(), sd[bkey].double()  # embeddings: A [r, vocab], B [dim, r]; same norm
        A2, B2 = A.reshape(A.shape[0], -1), B.reshape(B.shape[0], -1)
        r = A2.shape[0]
        module = re.sub(r"^base_model\.model\.", "", m.group(1))
        alpha = _pattern_value(acfg.get("alpha_pattern"), module, acfg.get("lora_alpha", r))
        s = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
        gram_a = A2 @ A2.T  # [r, r]
        gram_b = B2.T @ B2  # [r, r]
        total += s * s * float((gram_b * gram_a).sum())  # tr(GB GA) with both symmetric
        n += 1
    if n == 0:
        raise ValueError(f"{adapter_dir}: no lora_A/lora_B weights in the adapter file")
    if acfg.get("modules_to_save"):
        premem._warn(f"{adapter_dir}: modules_to_save {acfg['modules_to_save']} are fully trained; "
                     "their change is not in the LoRA distance")
    return total


def full_distance(model, base) -> float:
    """sum over all weights of (w - w0)^2 for two models with the same parameter names."""
    import torch

    ref = dict(base.named_parameters())
    total = 0.0
    with torch.no_grad():
        for name, w in model.named_parameters():
            if name not in ref:
                raise ValueError(f"parameter {name} of the checkpoint is not in the base model")
            total += float(((w.double() - ref[name].to(w.device).double()) ** 2).sum())
    return total


# ----------------------------------------------------------------------------- gradient variance


def minibatches(examples: list[dict], n_batches: int, batch_size: int, seed: int) -> list[list[dict]]:
    """n_batches seeded random draws (without replacement within a draw) of batch_size examples."""
    if not examples:
        raise ValueError("no train examples to draw minibatches from")
    rng = random.Random(seed)
    b = min(batch_size, len(examples))
    return [rng.sample(examples, b) for _ in range(n_batches)]


def batch_gradient(model, tok, batch: list[dict], max_length=None, micro_batch_size=4) -> list:
    """Gradient of the mean target-token cross-entropy over the whole minibatch (micro-batched,
    token-weighted, so it equals one forward over the batch), for every trainable parameter."""
    import torch
    import torch.nn.functional as F

    import data as data_mod

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    device = next(model.parameters()).device
    feats = [data_mod.encode(tok, e["prompt"], e["target"], max_length) for e in batch]
    n_tok = sum(sum(1 for x in f["labels"] if x != -100) for f in feats)
    collate = data_mod.Collator(tok.pad_token_id, "right")
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for i in range(0, len(feats), micro_batch_size):
            enc = {k: v.to(device) for k, v in collate(feats[i:i + micro_batch_size]).items()}
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            lab = enc["labels"][:, 1:]
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), lab.reshape(-1),
                                   ignore_index=-100, reduction="sum") / n_tok
            loss.backward()
    grads = [(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for p in params]
    model.zero_grad(set_to_none=True)
    return grads


def gradient_variance(model, tok, batches: list[list[dict]], max_length=None, micro_batch_size=4,
                      progress=False) -> float:
    """Mean over all trainable elements of the variance (divided by the number of batches) of the
    gradient across the minibatches. Dropout off; Welford's update, so equal gradients give exactly 0."""
    import torch

    was_training = model.training
    model.eval()
    mean = m2 = None
    try:
        for k, batch in enumerate(tqdm(batches, desc="gradient variance", unit="batch", disable=not progress), 1):
            g = [x.double() for x in batch_gradient(model, tok, batch, max_length, micro_batch_size)]
            if mean is None:
                mean = [torch.zeros_like(x) for x in g]
                m2 = [torch.zeros_like(x) for x in g]
            for mu, s, x in zip(mean, m2, g):
                d = x - mu
                mu += d / k
                s += d * (x - mu)
    finally:
        model.train(was_training)
    n_el = sum(s.numel() for s in m2)
    return float(sum(float(s.sum()) for s in m2) / len(batches) / n_el)


# ----------------------------------------------------------------------------- ATC


def atc_fit_threshold(scores, accuracy: float) -> float:
    """Threshold t with mean(scores > t) = accuracy (to the nearest 1/n): the midpoint between the
    k-th and (k+1)-th largest score, k = round(accuracy * n)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("ATC: no finite scores to fit the threshold on")
    if not 0 <= accuracy <= 1:
        raise ValueError(f"ATC: accuracy must be in [0, 1], got {accuracy}")
    k = int(round(accuracy * s.size))
    if k == 0:
        return float(s[0])  # nothing strictly above the largest score
    if k == s.size:
        return float(np.nextafter(s[-1], -np.inf))
    if s[k - 1] == s[k]:
        premem._warn(f"ATC: tied scores at the threshold; fitted fraction above differs from {accuracy:.4f}")
    return float((s[k - 1] + s[k]) / 2)


def atc_predict(scores, threshold: float) -> float:
    """Predicted accuracy: the fraction of scores above the threshold."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    return float((s > threshold).mean()) if s.size else float("nan")


def greedy_scores(run_dir, step: int, split: str) -> np.ndarray | None:
    """The greedy-response likelihoods of a checkpoint and split, or None when not evaluated."""
    import evaluate

    p = evaluate.greedy_path(run_dir, step, split)
    if not p.exists():
        return None
    try:
        df = pd.read_parquet(p, columns=["likelihood"])
    except Exception as e:  # noqa: BLE001
        raise premem.PremError(f"{p}: cannot read column likelihood of a greedy record ({type(e).__name__}: {e})") from None
    return df["likelihood"].to_numpy(dtype=np.float64)


# ----------------------------------------------------------------------------- per-checkpoint cache


def cache_path(run_dir, step: int) -> Path:
    return Path(run_dir) / "priors" / f"step-{int(step):06d}.json"


def compute_run_priors(run_dir, *, n_batches=5, batch_size=None, seed=0, grad_variance=True, force=False,
                       progress=True) -> dict[int, dict]:
    """Gradient variance and distance from initialization for every complete checkpoint of a run,
    cached in RUN/priors/step-XXXXXX.json. Returns {step: cached dict}."""
    import config as config_mod
    import data as data_mod
    import evaluate

    run_dir = Path(run_dir)
    cfg = records.read_run_config(run_dir)
    cfg = {**{k: v[0] for k, v in config_mod.DEFAULTS.items()}, **cfg}
    settings = {"n_batches": int(n_batches), "batch_size": int(batch_size or cfg["batch_size"]), "seed": int(seed),
                "grad_variance": bool(grad_variance)}
    out, todo = {}, []
    for step, epoch, folder in evaluate.checkpoint_steps(run_dir):
        p = cache_path(run_dir, step)
        if p.exists() and not force:
            try:
                c = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise premem.PremError(f"{p}: corrupt cache file ({e}); delete it or use --force") from None
            if c.get("settings") == settings:
                out[step] = c
                continue
            if not grad_variance and c.get("distance_from_init") is not None:
                # the distance does not depend on the settings; keep the file (it may hold a gradient
                # variance computed with other settings) and report no gradient variance
                out[step] = {**c, "grad_variance": None}
                continue
        todo.append((step, epoch, folder))
    if not todo:
        return out
    model = tok = batches = None
    if grad_variance:
        import models

        tok = models.load_tokenizer(cfg["model"], cfg["tokenizer"])
        base = models.load_base_model(cfg)
        batches = minibatches(data_mod.train_examples(cfg), n_batches, settings["batch_size"], seed)
    for step, epoch, folder in tqdm(todo, desc=f"{run_dir.name} priors", unit="ckpt", disable=not progress):
        row = {"step": step, "epoch": epoch, "checkpoint": folder.name, "settings": settings}
        if cfg["lora_r"] == 0:
            import models

            model = models.load_checkpoint(cfg, folder)
            ref = base if grad_variance else models.load_base_model(cfg)
            row["distance_from_init"] = full_distance(model, ref)
        else:
            row["distance_from_init"] = lora_distance(folder)
        if grad_variance:
            if cfg["lora_r"] == 0:
                for q in model.parameters():
                    q.requires_grad_(True)
                model.to(next(base.parameters()).device)
            else:
                from peft import PeftModel

                model = PeftModel.from_pretrained(base, str(folder), is_trainable=True)
            row["grad_variance"] = gradient_variance(model, tok, batches, cfg["max_length"], cfg["micro_batch_size"],
                                                     progress=progress)
            if cfg["lora_r"] != 0:
                base = model.unload()  # the base model without the adapter layers, for the next checkpoint
        else:
            row["grad_variance"] = None
        records.atomic_write_json(cache_path(run_dir, step), row)
        out[step] = row
    return out


# ----------------------------------------------------------------------------- the command


METRICS = (  # (column plotted on x, panel title)
    ("grad_variance", "gradient variance"),
    ("distance_from_init", "distance from initialization"),
    ("atc_gap", "ATC: train acc - predicted test acc"),
    ("premem_gap", "PreMemAcc: train acc - PreMemAcc"),
)


def _pick_run(runs, spec):
    if spec is None:
        return runs[0]
    for r in runs:
        if spec in (r.name, r.path.name, str(r.path)) or (Path(spec).exists() and Path(spec).resolve() == r.path.resolve()):
            return r
    raise premem.PremError(f"--atc-reference {spec!r} is none of the runs given: " + ", ".join(r.name for r in runs))


def fit_atc(ref: premem.RunData) -> dict:
    """The ATC threshold from the reference run's last checkpoint with test greedy and test records."""
    for k in range(len(ref.steps) - 1, -1, -1):
        step = int(ref.steps[k])
        scores = greedy_scores(ref.path, step, "test")
        if scores is not None and not np.isnan(ref.test_acc[k]):
            t = atc_fit_threshold(scores, float(ref.test_acc[k]))
            return {"reference_run": ref.name, "reference_step": step, "reference_test_acc": float(ref.test_acc[k]),
                    "threshold": t, "reference_fraction_above": atc_predict(scores, t), "n_test": int(scores.size)}
    raise premem.PremError(
        f"{ref.path}: ATC reference run has no checkpoint with both test records and test greedy records "
        f"({ref.path}/records/greedy-step-XXXXXX.test.parquet); make them with:\n  " + GREEDY_HINT.format(run=ref.path))


def priors_table(runs, t, atc, cached) -> pd.DataFrame:
    rows = []
    for run in runs:
        pm = premem._premem_ll(run.acc, run.ll, t).mean(axis=1)
        train_acc = run.acc.mean(axis=1)
        for k, step in enumerate(run.steps.tolist()):
            if np.isnan(run.test_acc[k]) or step not in cached[run.name]:
                continue
            c = cached[run.name][step]
            sc = greedy_scores(run.path, step, "train") if atc else None
            pred = atc_predict(sc, atc["threshold"]) if sc is not None else float("nan")
            rows.append({
                "run": run.name, "step": step, "epoch": float(run.epochs[k]),
                "lr": premem._num(premem._cfg(run, "learning_rate")), "train_acc": float(train_acc[k]),
                "test_acc": float(run.test_acc[k]), "gap": float(train_acc[k] - run.test_acc[k]),
                "grad_variance": c.get("grad_variance"), "distance_from_init": c.get("distance_from_init"),
                "atc_pred_test_acc": pred, "atc_gap": float(train_acc[k] - pred),
                "premem_acc": float(pm[k]), "premem_gap": float(train_acc[k] - pm[k]),
            })
    return pd.DataFrame(rows, columns=["run", "step", "epoch", "lr", "train_acc", "test_acc", "gap", "grad_variance",
                                       "distance_from_init", "atc_pred_test_acc", "atc_gap", "premem_acc", "premem_gap"])


def pearson_by_metric(points: pd.DataFrame) -> dict:
    out = {}
    for col, _ in METRICS:
        x = pd.to_numeric(points[col], errors="coerce").to_numpy(dtype=float)
        y = points["gap"].to_numpy(dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        out[col] = {"pearson_r": premem.pearson_r(y[ok], x[ok]) if ok.sum() >= 2 else float("nan"), "n": int(ok.sum())}
    return out


def fig5(points: pd.DataFrame, corr: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.8))
    cmap = plt.get_cmap("tab10")
    for ax, (col, title) in zip(axes, METRICS):
        for j, (name, g) in enumerate(points.groupby("run", sort=False)):
            x = pd.to_numeric(g[col], errors="coerce").to_numpy(dtype=float)
            ax.plot(x, g["gap"], "o-", color=cmap(j % 10), label=name, ms=5, lw=1)
        if col in ("atc_gap", "premem_gap"):
            v = pd.concat([pd.to_numeric(points[col], errors="coerce"), points["gap"]]).dropna()
            if len(v):
                premem._diag(ax, float(v.min()), float(v.max()))
        r = corr[col]["pearson_r"]
        ax.set_title(f"{title}\nPearson r = {'n/a' if r is None or not np.isfinite(r) else f'{r:.3f}'}"
                     f" (n={corr[col]['n']})", fontsize=9)
        ax.set_xlabel(f"predicted gap ({title.split(':')[0]})" if ":" in title else title)
        if col == "premem_gap":
            ax.set_facecolor("#f4f8ff")
    axes[0].set_ylabel("generalization gap (train acc - test acc)")
    axes[-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def run_priors(run_dirs, out, *, atc_reference=None, threshold_args=None, n_batches=5, batch_size=None, seed=0,
               grad_variance=True, force=False, figures=True, progress=True, verbose=True) -> dict:
    """Everything `premem.py priors` does; returns the dict written to OUT/priors.json."""
    import matplotlib.pyplot as plt

    out = Path(out)
    if n_batches < 2:
        raise premem.PremError(f"--grad-batches must be at least 2 (a variance), got {n_batches}")
    runs = premem.load_runs(run_dirs, variant="original", progress=progress)
    if threshold_args is None:
        threshold_args = argparse.Namespace(threshold=None, threshold_ppl=None, threshold_from=None)
    t, source = robustness.resolve_threshold(threshold_args, runs)
    cached = {}
    for run in runs:
        cached[run.name] = compute_run_priors(run.path, n_batches=n_batches, batch_size=batch_size, seed=seed,
                                              grad_variance=grad_variance, force=force, progress=progress)
        if not cached[run.name]:
            premem._warn(f"{run.path}: no complete checkpoint folder; no prior metrics for this run")
    try:
        atc = fit_atc(_pick_run(runs, atc_reference))
    except premem.PremError as e:
        if atc_reference is not None:
            raise
        premem._warn(f"ATC left out: {e}")
        atc = None
    points = priors_table(runs, t, atc, cached)
    if points.empty:
        raise premem.PremError("no checkpoint has a checkpoint folder, train records and test records: "
                               + ", ".join(str(r.path) for r in runs))
    if atc and points["atc_pred_test_acc"].isna().any():
        miss = sorted(set(points.loc[points["atc_pred_test_acc"].isna(), "run"]))
        premem._warn(f"no train greedy records for some checkpoints of {miss}; make them with: "
                     + GREEDY_HINT.format(run="RUN"))
    corr = pearson_by_metric(points)
    result = premem._clean({
        "threshold_loglog": t, "threshold_ppl": premem.ppl_from_loglog(t), "threshold_source": source,
        "atc": atc, "pearson_r_vs_gap": corr,
        "gradient_variance": {"n_batches": n_batches, "batch_size": batch_size or "run's batch_size", "seed": seed,
                              "computed": grad_variance},
        "n_runs": len(runs), "n_points": len(points), "points": points.to_dict(orient="records"),
        "files": ["priors.json", "priors.csv"],
    })
    out.mkdir(parents=True, exist_ok=True)
    records.atomic_write_text(out / "priors.csv", points.to_csv(index=False))
    if figures:
        f = fig5(points, corr)
        result["files"] += ["figures/" + n for n in premem._save_fig(f, out / "figures", "fig5")]
        plt.close(f)
    records.atomic_write_json(out / "priors.json", result)
    if verbose:
        print(points.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
        if atc:
            print(f"ATC threshold {atc['threshold']:.5g} fitted on {atc['reference_run']} step {atc['reference_step']} "
                  f"(test acc {atc['reference_test_acc']:.3f}, fraction above {atc['reference_fraction_above']:.3f})")
        print("Pearson r with the generalization gap: " + ", ".join(
            f"{col} {_f(corr[col]['pearson_r'])}" for col, _ in METRICS))
        print(f"wrote {out}/: " + ", ".join(result["files"]))
    return result


def _f(v):
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "priors", help="gradient variance, distance from init, ATC vs the generalization gap (Figure 5)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+", metavar="RUN", help="run folders (globs fine)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--atc-reference", metavar="RUN", help="run whose test set fits the ATC threshold (default: the first)")
    robustness.add_threshold_args(p)
    p.add_argument("--grad-batches", type=int, default=5, help="minibatches for the gradient variance (default %(default)s)")
    p.add_argument("--grad-batch-size", type=int, help="examples per minibatch (default: the run's batch_size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the minibatch draws (default %(default)s)")
    p.add_argument("--no-grad-variance", action="store_true", help="skip the gradient variance (no model needed)")
    p.add_argument("--force", action="store_true", help="recompute cached per-checkpoint metrics")
    p.add_argument("--no-figures", action="store_true")
    p.set_defaults(func=lambda a: run_priors(
        a.run_dirs, a.out, atc_reference=a.atc_reference, threshold_args=a, n_batches=a.grad_batches,
        batch_size=a.grad_batch_size, seed=a.seed, grad_variance=not a.no_grad_variance, force=a.force,
        figures=not a.no_figures))


if __name__ == "__main__":
    sys.exit(premem.main(["priors", *sys.argv[1:]]))
