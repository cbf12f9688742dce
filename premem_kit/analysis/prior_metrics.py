"""The generalization metrics proposed before PreMemAcc (Kang et al., appendix B), per checkpoint.

gradient variance
    The gradient of the training loss (mean cross-entropy over the target tokens, as in training) with
    respect to the trainable parameters (the LoRA A and B matrices; every weight when lora_r = 0) on
    n_batches seeded random minibatches of the run's train set (the same draws at every checkpoint):
    the elementwise variance across the gradients (population variance), averaged over all elements.
    Dropout is off (eval mode), so identical minibatches give exactly 0.
distance from initialization
    The sum over all weights of the squared change from the initial model. With LoRA the initial
    adapter is B = 0, so it is sum ||s * B @ A||^2 over adapted layers (s = lora_alpha / r, or
    lora_alpha / sqrt(r) with rsLoRA), from the r x r Gram matrices, straight from the adapter file.
ATC (Average Thresholded Confidence)
    A threshold on the greedy-response likelihood such that the fraction of a reference set above it
    equals that set's accuracy; the predicted accuracy of other examples is their fraction above it.

compute_run_priors caches gradient variance and distance per checkpoint in RUN/priors/step-XXXXXX.json
(runs.priors_path), with the settings they were computed with.
"""
from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from premem_kit.core import runs
from premem_kit.core.errors import warn
from premem_kit.core.files import atomic_write_json
from premem_kit.analysis.rundata import AnalysisError
from premem_kit.core.config import Config


class PriorsError(AnalysisError):
    """Bad input of the prior metrics (adapter files, caches, scores); the message names the file."""


class AdapterMissingError(PriorsError, FileNotFoundError):
    """A checkpoint folder without the LoRA adapter files."""


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
        raise AdapterMissingError(f"{cfg_path}: missing; {d} is not a LoRA adapter folder")
    acfg = json.loads(cfg_path.read_text())
    if acfg.get("peft_type", "LORA") != "LORA":
        raise PriorsError(f"{cfg_path}: peft_type {acfg.get('peft_type')!r}, expected LORA")
    if acfg.get("use_dora"):
        raise PriorsError(f"{cfg_path}: DoRA adapters are not supported (the merged change is not s*B@A)")
    if (d / "adapter_model.safetensors").exists():
        from safetensors.torch import load_file

        sd = load_file(str(d / "adapter_model.safetensors"))
    elif (d / "adapter_model.bin").exists():
        sd = torch.load(d / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise AdapterMissingError(f"{d}: no adapter_model.safetensors or adapter_model.bin")
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
            raise PriorsError(f"{adapter_dir}: {key} has no matching {bkey}")
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
        raise PriorsError(f"{adapter_dir}: no lora_A/lora_B weights in the adapter file")
    if acfg.get("modules_to_save"):
        warn(f"{adapter_dir}: modules_to_save {acfg['modules_to_save']} are fully trained; "
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
                raise PriorsError(f"parameter {name} of the checkpoint is not in the base model")
            total += float(((w.double() - ref[name].to(w.device).double()) ** 2).sum())
    return total


# ----------------------------------------------------------------------------- gradient variance


def minibatches(examples: list[dict], n_batches: int, batch_size: int, seed: int) -> list[list[dict]]:
    """n_batches seeded random draws (without replacement within a draw) of batch_size examples."""
    if not examples:
        raise PriorsError("no train examples to draw minibatches from")
    rng = random.Random(seed)
    b = min(batch_size, len(examples))
    return [rng.sample(examples, b) for _ in range(n_batches)]


def batch_gradient(model, tok, batch: list[dict], max_length=None, micro_batch_size=4) -> list:
    """Gradient of the mean target-token cross-entropy over the whole minibatch (micro-batched,
    token-weighted, so it equals one forward over the batch), for every trainable parameter."""
    import torch
    import torch.nn.functional as F

    from premem_kit.tasks import data as data_mod

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PriorsError("the model has no trainable parameters")
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
        raise PriorsError("ATC: no finite scores to fit the threshold on")
    if not 0 <= accuracy <= 1:
        raise PriorsError(f"ATC: accuracy must be in [0, 1], got {accuracy}")
    k = int(round(accuracy * s.size))
    if k == 0:
        return float(s[0])  # nothing strictly above the largest score
    if k == s.size:
        return float(np.nextafter(s[-1], -np.inf))
    if s[k - 1] == s[k]:
        warn(f"ATC: tied scores at the threshold; fitted fraction above differs from {accuracy:.4f}")
    return float((s[k - 1] + s[k]) / 2)


def atc_predict(scores, threshold: float) -> float:
    """Predicted accuracy: the fraction of scores above the threshold."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    return float((s > threshold).mean()) if s.size else float("nan")


def greedy_scores(run_dir, step: int, split: str) -> np.ndarray | None:
    """The greedy-response likelihoods of a checkpoint and split, or None when not evaluated."""
    import pandas as pd

    p = runs.greedy_path(run_dir, step, split)
    if not p.exists():
        return None
    try:
        df = pd.read_parquet(p, columns=["likelihood"])
    except Exception as e:  # noqa: BLE001
        raise PriorsError(f"{p}: cannot read column likelihood of a greedy record ({type(e).__name__}: {e})") from None
    return df["likelihood"].to_numpy(dtype=np.float64)


# ----------------------------------------------------------------------------- per-checkpoint cache


def cached_priors(run_dir, settings: dict, grad_variance: bool, force: bool) -> tuple[dict[int, dict], list]:
    """The cached values of a run's complete checkpoints that fit `settings` ({step: dict}), and the
    (step, epoch, folder) of the checkpoints still to compute."""
    out, todo = {}, []
    for step, epoch, folder in runs.checkpoints(run_dir):
        p = runs.priors_path(run_dir, step)
        if p.exists() and not force:
            try:
                c = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise PriorsError(f"{p}: corrupt cache file ({e}); delete it or use --force") from None
            if c.get("settings") == settings:
                out[step] = c
                continue
            if not grad_variance and c.get("distance_from_init") is not None:
                # the distance does not depend on the settings; keep the file (it may hold a gradient
                # variance computed with other settings) and report no gradient variance
                out[step] = {**c, "grad_variance": None}
                continue
        todo.append((step, epoch, folder))
    return out, todo


def compute_run_priors(run_dir, *, n_batches=5, batch_size=None, seed=0, grad_variance=True, force=False,
                       progress=True) -> dict[int, dict]:
    """Gradient variance and distance from initialization for every complete checkpoint of a run,
    cached in RUN/priors/step-XXXXXX.json. Returns {step: cached dict}."""
    run_dir = Path(run_dir)
    cfg = runs.read_config(run_dir)
    settings = {"n_batches": int(n_batches), "batch_size": int(batch_size or cfg.batch_size), "seed": int(seed),
                "grad_variance": bool(grad_variance)}
    out, todo = cached_priors(run_dir, settings, grad_variance, force)
    if not todo:
        return out
    from premem_kit.models import loading as models

    base = tok = batches = None
    if grad_variance:
        from premem_kit.tasks import data as data_mod

        tok = models.load_tokenizer(cfg.model, cfg.tokenizer)
        base = models.load_base_model(cfg)
        batches = minibatches(data_mod.train_examples(cfg), n_batches, settings["batch_size"], seed)
    for step, epoch, folder in tqdm(todo, desc=f"{run_dir.name} priors", unit="ckpt", disable=not progress):
        row = {"step": step, "epoch": epoch, "checkpoint": folder.name, "settings": settings}
        model = None
        if cfg.lora_r == 0:
            model = models.load_checkpoint(cfg, folder)
            row["distance_from_init"] = full_distance(model, base if grad_variance else models.load_base_model(cfg))
        else:
            row["distance_from_init"] = lora_distance(folder)
        row["grad_variance"] = None
        if grad_variance:
            row["grad_variance"], base = checkpoint_gradient_variance(cfg, folder, model, base, tok, batches, progress)
        atomic_write_json(runs.priors_path(run_dir, step), row)
        out[step] = row
    return out


def checkpoint_gradient_variance(cfg: Config, folder: Path, model, base, tok, batches, progress: bool):
    """The gradient variance of one checkpoint: the full model (lora_r = 0) made trainable, or its
    adapter loaded trainable onto `base`. Returns (variance, the base model without the adapter)."""
    if cfg.lora_r == 0:
        for q in model.parameters():
            q.requires_grad_(True)
        model.to(next(base.parameters()).device)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, str(folder), is_trainable=True)
    var = gradient_variance(model, tok, batches, cfg.max_length, cfg.micro_batch_size, progress=progress)
    if cfg.lora_r != 0:
        base = model.unload()  # the base model without the adapter layers, for the next checkpoint
    return var, base
