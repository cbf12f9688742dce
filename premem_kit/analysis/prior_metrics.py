"""The generalization metrics proposed before PreMemAcc (Kang et al., appendix B), per checkpoint.

gradient variance
    The gradient of the training loss with respect to the trainable parameters (the LoRA A and B matrices;
    every weight when lora_r = 0) on n_batches minibatches of the run's train set, the same at every
    checkpoint: the elementwise variance across the gradients (population variance), averaged over all
    elements. As the authors' gsm8k_eval_grad_var.py (reasoning_data): the minibatches are the first
    n_batches x batch_size of the run's train examples in the train split's order (draw "first"; for a full
    run, the split's first 5 x 128 as theirs; "random": seeded random draws, the kit's earlier rule) and
    the loss is the mean over the minibatch's examples of each example's mean target-token cross-entropy
    (loss "example"; "token": the mean over all target tokens of the minibatch, as training's).
    Dropout is off (eval mode), so identical minibatches give exactly 0.
distance from initialization
    The sum of the squared change from the initial model over every weight but the input embedding and
    the output layer, as the authors' gsm8k_eval_weight_norm.py (which leaves out model.embed_tokens and
    lm_head); exclude_embeddings=False sums over every weight (the kit's earlier rule). With LoRA the
    initial adapter is B = 0, so it is sum ||s * B @ A||^2 over adapted layers (s = lora_alpha / r, or
    lora_alpha / sqrt(r) with rsLoRA), from the r x r Gram matrices, straight from the adapter file.
ATC (Average Thresholded Confidence)
    A threshold on a score of the greedy response such that the fraction of a reference set above it
    equals an accuracy; the predicted accuracy of other examples is their fraction above it. The score is
    the response's whole-sequence log-probability (score "sequence": vLLM's cumulative_logprob in the
    authors' gsm8k_eval.py; "token-mean": its per-token mean, the kit's earlier score).

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

# modules whose LoRA change the distance leaves out: the input embedding and the output layer (the authors
# leave out model.embed_tokens and lm_head); a LoRA embedding adapter (lora_embedding_A/B) counts as one
EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_in", "embed_out")


def _is_embedding_module(module: str, embedding_adapter: bool) -> bool:
    return embedding_adapter or module.rsplit(".", 1)[-1] in EMBEDDING_MODULES


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


def lora_distance(adapter_dir, exclude_embeddings: bool = True) -> float:
    """sum over adapted layers of ||s * B @ A||_F^2 = s^2 tr((B^T B)(A A^T)), from the adapter file; the
    input embedding and the output layer left out unless exclude_embeddings is False."""
    acfg, sd = read_adapter(adapter_dir)
    total = 0.0
    n = 0
    for key, A in sd.items():
        m = re.match(r"^(.*)\.lora_(embedding_)?A(\.[^.]+)?(\.weight)?$", key)
        if not m:
            continue
        if exclude_embeddings and _is_embedding_module(m.group(1), bool(m.group(2))):
            n += 1  # an adapted layer, left out
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


def embedding_parameter_names(model) -> set[str]:
    """Names of the parameters of the model's input embedding and output layer (one when tied)."""
    ids = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        mod = getattr(model, get, lambda: None)()
        if mod is not None and getattr(mod, "weight", None) is not None:
            ids.add(id(mod.weight))
    return {name for name, p in model.named_parameters() if id(p) in ids}


def full_distance(model, base, exclude_embeddings: bool = True) -> float:
    """sum of (w - w0)^2 for two models with the same parameter names, over every weight but the input
    embedding and the output layer (all of them with exclude_embeddings False)."""
    import torch

    ref = dict(base.named_parameters())
    skip = embedding_parameter_names(model) if exclude_embeddings else set()
    total = 0.0
    with torch.no_grad():
        for name, w in model.named_parameters():
            if name in skip:
                continue
            if name not in ref:
                raise PriorsError(f"parameter {name} of the checkpoint is not in the base model")
            total += float(((w.double() - ref[name].to(w.device).double()) ** 2).sum())
    return total


# ----------------------------------------------------------------------------- gradient variance


def in_split_order(cfg: Config, examples: list[dict]) -> list[dict]:
    """The examples in the order of the task's train split (rows from a train_file after them, in file
    order): the order the authors' gradient variance reads them in."""
    from premem_kit.tasks import data as data_mod

    pos = {e["id"]: k for k, e in enumerate(data_mod.load_split(cfg, "train"))}
    return sorted(examples, key=lambda e: pos.get(e["id"], len(pos)))


def minibatches(examples: list[dict], n_batches: int, batch_size: int, seed: int = 0,
                draw: str = "first") -> list[list[dict]]:
    """n_batches minibatches of batch_size examples. draw "first": the first n_batches x batch_size
    examples in order, batch k = examples k*B .. (k+1)*B - 1 (the authors'; with fewer examples the order
    wraps around, with a warning); "random": seeded random draws (without replacement within a draw)."""
    if not examples:
        raise PriorsError("no train examples to draw minibatches from")
    b = min(batch_size, len(examples))
    if draw == "random":
        rng = random.Random(seed)
        return [rng.sample(examples, b) for _ in range(n_batches)]
    if draw != "first":
        raise PriorsError(f"minibatch draw {draw!r}: expected first or random")
    if n_batches * b > len(examples):
        warn(f"gradient variance: {n_batches} x {b} examples wanted, the run has {len(examples)}; "
             "the minibatches wrap around its train order")
    return [[examples[(k * b + j) % len(examples)] for j in range(b)] for k in range(n_batches)]


def batch_gradient(model, tok, batch: list[dict], max_length=None, micro_batch_size=4, loss: str = "example") -> list:
    """Gradient of the minibatch loss for every trainable parameter (micro-batched; equal to one forward over
    the batch). loss "example": the mean over examples of each example's mean target-token cross-entropy
    (the authors' per-example HF loss, accumulated); "token": the mean over all target tokens of the batch."""
    import torch
    import torch.nn.functional as F

    from premem_kit.tasks import data as data_mod

    if loss not in ("example", "token"):
        raise PriorsError(f"gradient variance loss {loss!r}: expected example or token")
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
            per_tok = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), lab.reshape(-1),
                                      ignore_index=-100, reduction="none").reshape(lab.shape)
            if loss == "token":
                value = per_tok.sum() / n_tok
            else:  # each example's mean over its target tokens, averaged over the minibatch
                counts = (lab != -100).sum(dim=1).clamp(min=1)
                value = (per_tok.sum(dim=1) / counts).sum() / len(feats)
            value.backward()
    grads = [(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for p in params]
    model.zero_grad(set_to_none=True)
    return grads


def gradient_variance(model, tok, batches: list[list[dict]], max_length=None, micro_batch_size=4,
                      progress=False, loss: str = "example") -> float:
    """Mean over all trainable elements of the variance (divided by the number of batches) of the
    gradient across the minibatches. Dropout off; Welford's update, so equal gradients give exactly 0."""
    import torch

    was_training = model.training
    model.eval()
    mean = m2 = None
    try:
        for k, batch in enumerate(tqdm(batches, desc="gradient variance", unit="batch", disable=not progress), 1):
            g = [x.double() for x in batch_gradient(model, tok, batch, max_length, micro_batch_size, loss)]
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
    k-th and (k+1)-th largest score, k = round(accuracy * n). (The authors take np.percentile(scores,
    100 * (1 - accuracy)), which interpolates between the same two scores: the same fraction above.)
    NaN scores are left out; a -inf score (a response of probability 0) is the lowest."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    s = s[~np.isnan(s)]
    if s.size == 0 or not np.isfinite(s[0]):
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
    if np.isneginf(s[k]):
        return float(np.nextafter(s[k - 1], -np.inf))
    return float((s[k - 1] + s[k]) / 2)


def atc_predict(scores, threshold: float) -> float:
    """Predicted accuracy: the fraction of scores above the threshold (NaN scores left out; -inf counts,
    below every threshold)."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[~np.isnan(s)]
    return float((s > threshold).mean()) if s.size else float("nan")


def greedy_scores(run_dir, step: int, split: str, score: str = "sequence") -> np.ndarray | None:
    """The ATC scores of a checkpoint's greedy responses, or None when not evaluated. score "sequence": the
    log-probability of the whole response, tokens x log(likelihood) (the record's likelihood is the exp of
    the mean log-prob over its tokens); "token-mean": the likelihood itself (a monotone map of the mean)."""
    import pandas as pd

    if score not in ("sequence", "token-mean"):
        raise PriorsError(f"ATC score {score!r}: expected sequence or token-mean")
    p = runs.greedy_path(run_dir, step, split)
    if not p.exists():
        return None
    try:
        df = pd.read_parquet(p, columns=["likelihood", "tokens"])
    except Exception as e:  # noqa: BLE001
        raise PriorsError(f"{p}: cannot read columns likelihood, tokens of a greedy record ({type(e).__name__}: "
                          f"{e})") from None
    lik = df["likelihood"].to_numpy(dtype=np.float64)
    if score == "token-mean":
        return lik
    with np.errstate(divide="ignore", invalid="ignore"):
        return df["tokens"].to_numpy(dtype=np.float64) * np.log(lik)


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
            same_distance = (c.get("settings") or {}).get("distance", "all weights") == settings["distance"]
            if not grad_variance and c.get("distance_from_init") is not None and same_distance:
                # the distance depends only on which weights it sums over; keep the file (it may hold a
                # gradient variance computed with other settings) and report no gradient variance
                out[step] = {**c, "grad_variance": None}
                continue
        todo.append((step, epoch, folder))
    return out, todo


DISTANCE_WEIGHTS = {True: "without embeddings", False: "all weights"}  # exclude_embeddings -> cache label


def compute_run_priors(run_dir, *, n_batches=5, batch_size=None, seed=0, grad_variance=True, force=False,
                       progress=True, draw="first", loss="example", exclude_embeddings=True) -> dict[int, dict]:
    """Gradient variance and distance from initialization for every complete checkpoint of a run,
    cached in RUN/priors/step-XXXXXX.json (with the settings; another setting recomputes). Returns
    {step: cached dict}. Defaults as the authors: the first n_batches x batch_size train examples in order,
    the per-example mean loss, the distance without the embedding and output layers."""
    run_dir = Path(run_dir)
    cfg = runs.read_config(run_dir)
    settings = {"n_batches": int(n_batches), "batch_size": int(batch_size or cfg.batch_size), "seed": int(seed),
                "grad_variance": bool(grad_variance), "draw": draw, "loss": loss,
                "distance": DISTANCE_WEIGHTS[bool(exclude_embeddings)]}
    out, todo = cached_priors(run_dir, settings, grad_variance, force)
    if not todo:
        return out
    from premem_kit.models import loading as models

    base = tok = batches = None
    if grad_variance:
        from premem_kit.tasks import data as data_mod

        tok = models.load_tokenizer(cfg.model, cfg.tokenizer)
        base = models.load_base_model(cfg)
        examples = data_mod.train_examples(cfg)
        if draw == "first":
            examples = in_split_order(cfg, examples)
        batches = minibatches(examples, n_batches, settings["batch_size"], seed, draw)
    for step, epoch, folder in tqdm(todo, desc=f"{run_dir.name} priors", unit="ckpt", disable=not progress):
        row = {"step": step, "epoch": epoch, "checkpoint": folder.name, "settings": settings}
        model = None
        if cfg.lora_r == 0:
            model = models.load_checkpoint(cfg, folder)
            row["distance_from_init"] = full_distance(model, base if grad_variance else models.load_base_model(cfg),
                                                      exclude_embeddings)
        else:
            row["distance_from_init"] = lora_distance(folder, exclude_embeddings)
        row["grad_variance"] = None
        if grad_variance:
            row["grad_variance"], base = checkpoint_gradient_variance(cfg, folder, model, base, tok, batches, progress,
                                                                      loss)
        atomic_write_json(runs.priors_path(run_dir, step), row)
        out[step] = row
    return out


def checkpoint_gradient_variance(cfg: Config, folder: Path, model, base, tok, batches, progress: bool,
                                 loss: str = "example"):
    """The gradient variance of one checkpoint: the full model (lora_r = 0) made trainable, or its
    adapter loaded trainable onto `base`. Returns (variance, the base model without the adapter)."""
    if cfg.lora_r == 0:
        for q in model.parameters():
            q.requires_grad_(True)
        model.to(next(base.parameters()).device)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, str(folder), is_trainable=True)
    var = gradient_variance(model, tok, batches, cfg.max_length, cfg.micro_batch_size, progress=progress, loss=loss)
    if cfg.lora_r != 0:
        base = model.unload()  # the base model without the adapter layers, for the next checkpoint
    return var, base
