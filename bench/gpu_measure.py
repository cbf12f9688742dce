"""The measurements of bench/bench_gpu.py (which runs them per model and writes the JSON): helpers,
the random-weight models (architecture JSON -> config, built once and saved with a word-level tokenizer),
and timed calls of the kit's sampling, perplexity and Trainer, each returning rows for the JSON."""
from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):  # premem_kit; cost_estimate (the GPU table, no third-party imports)
    if _p not in sys.path:
        sys.path.insert(0, _p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import cost_estimate  # noqa: E402

FITS_80GB_BYTES = 78.5 * 2 ** 30  # an "80 GB" card shows 79.2 GiB to CUDA, ~0.7 GiB of it for the context
SKIPPED = "skipped: time budget"


class BenchError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- helpers

def log(msg: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _clean(x):  # JSON-safe: NaN/inf -> None
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    return [_clean(v) for v in x] if isinstance(x, (list, tuple)) else x


def write_json(path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=1) + "\n")
    os.replace(tmp, path)


def share(frac: float, end: float) -> float:
    """A deadline: `frac` of the time left until `end`."""
    return time.time() + max(0.0, end - time.time()) * frac


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        import torch

        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if cuda():
        import torch

        torch.cuda.empty_cache()


def mem_gb(kind: str):
    """GB allocated now / at peak / reserved at peak (None without CUDA)."""
    if not cuda():
        return None
    import torch

    f = {"now": torch.cuda.memory_allocated, "peak": torch.cuda.max_memory_allocated,
         "peak_reserved": torch.cuda.max_memory_reserved}[kind]
    return round(f() / 1e9, 3)


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def timed(row: dict, fn):
    """fn() between synchronizations: row gets status ok, seconds and peak memory (or status oom);
    returns fn's result (None on out-of-memory)."""
    if cuda():
        import torch

        torch.cuda.reset_peak_memory_stats()
    try:
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
    except Exception as e:  # noqa: BLE001
        if not is_oom(e):
            raise
        row.update(status="oom", error=str(e)[:300], peak_allocated_gb=mem_gb("peak"))
        free_memory()
        return None
    row.update(status="ok", seconds=time.perf_counter() - t0, peak_allocated_gb=mem_gb("peak"))
    return out


def versions() -> dict:
    from importlib import metadata

    out = {}
    for p in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasets", "safetensors", "tokenizers"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def device_info(bandwidth_tbs=None) -> dict:
    """Where this runs, and the memory bandwidth the roofline uses (and where that number comes from)."""
    import torch

    info = {"machine": platform.node(), "python": platform.python_version(), "cuda": torch.cuda.is_available(),
            "gpu": None}
    if info["cuda"]:
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_bytes=p.total_memory, capability=f"{p.major}.{p.minor}",
                    cuda_version=torch.version.cuda)
    else:
        info.update(device="cpu", cpu=platform.processor() or platform.machine(), cpu_threads=torch.get_num_threads())
    spec = cost_estimate.gpu_spec(info["gpu"] or "")
    info["gpu_key"] = spec[0] if spec else None
    if bandwidth_tbs or spec:
        info.update(bandwidth_Bps=(bandwidth_tbs or spec[2]) * 1e12, bandwidth_source="--bandwidth-tbs" if
                    bandwidth_tbs else f"table in bench/cost_estimate.py: {spec[0]}")
    else:
        info.update(bandwidth_Bps=None, bandwidth_source="unknown device: pass --bandwidth-tbs for the roofline")
    return info


# ----------------------------------------------------------------------------- architectures, weights, tokenizer

def read_arch(arch_dir, name: str) -> dict:
    p = Path(arch_dir) / f"{name}.json"
    if not p.exists():
        have = sorted(x.stem for x in Path(arch_dir).glob("*.json"))
        raise BenchError(f"no architecture file {p} (have: {', '.join(have) or 'none'})")
    return json.loads(p.read_text())


def make_config(arch: dict):
    """A transformers config from an architecture JSON (keys starting with _ are notes)."""
    from transformers import AutoConfig

    d = {k: v for k, v in arch.items() if not k.startswith("_") and k not in ("torch_dtype", "dtype")}
    return AutoConfig.for_model(d.pop("model_type"), **d)


def special_ids(arch: dict) -> dict:
    """Ids of <bos>, <eos>, <pad> (if the architecture has one) and <unk> in the bench tokenizer."""
    first = lambda v: v[0] if isinstance(v, list) else v  # noqa: E731
    sp = {"bos": first(arch["bos_token_id"]), "eos": first(arch["eos_token_id"])}
    if arch.get("pad_token_id") is not None:
        sp["pad"] = arch["pad_token_id"]
    sp["unk"] = arch.get("unk_token_id", next(i for i in range(arch["vocab_size"]) if i not in sp.values()))
    return sp


def build_tokenizer(arch: dict):
    """Word-level over the whole vocabulary: word "w<i>" is token i, so n words are exactly n tokens (plus
    <bos>). Without a pad token the kit pads with EOS, as for Llama-3."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    sp = special_ids(arch)
    vocab = {f"w{i}": i for i in range(arch["vocab_size"])}
    for name, i in sp.items():
        vocab.pop(f"w{i}", None)
        vocab[f"<{name}>"] = i
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", sp["bos"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>" if "pad" in sp else None)


class Words:
    """Random text of n tokens for the bench tokenizer (no special tokens)."""

    def __init__(self, arch: dict, seed: int = 0):
        self.taken, self.vocab, self.rng = set(special_ids(arch).values()), arch["vocab_size"], random.Random(seed)

    def text(self, n: int) -> str:
        ids = []
        while len(ids) < n:
            i = self.rng.randrange(self.vocab)
            if i not in self.taken:
                ids.append(i)
        return " ".join(f"w{i}" for i in ids)


def ensure_weights(name: str, arch: dict, weights_dir) -> dict:
    """Build the random-weight model on the device (bf16 on CUDA, fp32 on CPU) and save it with its
    tokenizer, once: a folder with a matching bench_build.json is reused."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if cuda() else torch.float32
    folder, partial = Path(weights_dir) / name, Path(weights_dir) / f"{name}.partial"
    sig = hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]
    marker = folder / "bench_build.json"
    if marker.exists():
        m = json.loads(marker.read_text())
        if (m.get("arch_sha"), m.get("dtype")) == (sig, str(dtype)):
            return dict(m, cached=True, folder=str(folder))
    elif folder.exists() and any(folder.iterdir()):
        raise BenchError(f"{folder} exists and was not written by bench_gpu.py; pass another --weights-dir")
    shutil.rmtree(partial, ignore_errors=True)
    t0 = time.time()
    with torch.device("cuda" if cuda() else "cpu"):
        model = AutoModelForCausalLM.from_config(make_config(arch), dtype=dtype)
    sync()
    t_init = time.time() - t0
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    probe = Path(weights_dir)
    while not probe.exists():
        probe = probe.parent
    if (free := shutil.disk_usage(probe).free) < nbytes * 1.05 + 2e9:
        raise BenchError(f"{probe}: {free / 1e9:.1f} GB free, {name} needs {nbytes / 1e9:.1f} GB")
    t1 = time.time()
    model.save_pretrained(partial, max_shard_size="4GB")
    build_tokenizer(arch).save_pretrained(partial)
    info = {"arch_sha": sig, "dtype": str(dtype), "params": sum(p.numel() for p in model.parameters()),
            "bytes": nbytes, "init_s": round(t_init, 2), "save_s": round(time.time() - t1, 2),
            "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    del model
    free_memory()
    write_json(partial / "bench_build.json", info)
    shutil.rmtree(folder, ignore_errors=True)  # an older build of ours (it had a bench_build.json)
    os.replace(partial, folder)
    return dict(info, cached=False, folder=str(folder))


def model_bytes(model) -> int:
    """Bytes of the weights as stored (4-bit weights packed, plus bitsandbytes' block constants)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            qs = getattr(t, "quant_state", None)
            s2 = getattr(qs, "state2", None)  # double quantization
            for x in (t, getattr(qs, "absmax", None), getattr(s2, "absmax", None), getattr(s2, "code", None)):
                total += x.numel() * x.element_size() if hasattr(x, "element_size") else 0
    return total


# ----------------------------------------------------------------------------- measurements

def measure_sampling(model, tok, arch, *, phase, weights, batches, prompt_len, new_tokens, deadline, bandwidth,
                     seed=0) -> list[dict]:
    """premem_kit.inference.sample, one sample per prompt, all prompts in one generate call, prompt_len
    tokens in (with BOS) and exactly new_tokens out; decode steps/s = new_tokens / seconds."""
    from premem_kit import inference

    gcfg = (model.get_base_model() if hasattr(model, "get_base_model") else model).generation_config
    nbytes, words, rows, old = model_bytes(model), Words(arch, seed), [], gcfg.min_new_tokens
    head = arch.get("head_dim") or arch["hidden_size"] // arch["num_attention_heads"]
    kv_heads = arch.get("num_key_value_heads") or arch["num_attention_heads"]
    kv_per_token = 2 * arch["num_hidden_layers"] * kv_heads * head * (2 if cuda() else 4)  # K and V, bf16 / fp32

    def run(prompts, n_new):
        return inference.sample(model, tok, prompts, n=1, max_new_tokens=n_new, batch_size=len(prompts), stop=None,
                                progress=False, seed=seed)

    run([words.text(prompt_len - 1)] * 2, 2)  # warm-up: kernels, allocator
    gcfg.min_new_tokens = new_tokens
    try:
        for b in batches:
            rows.append(row := {"phase": phase, "weights": weights, "batch": b, "prompt_len": prompt_len,
                                "new_tokens": new_tokens, "sampling": "temperature 0.8, top_p 0.95 (kit defaults)"})
            if time.time() > deadline:
                row["status"] = SKIPPED
                continue
            prompts = [words.text(prompt_len - 1) for _ in range(b)]
            if (out := timed(row, lambda: run(prompts, new_tokens))) is None:
                continue
            steps = new_tokens / row["seconds"]
            row.update(tokens=b * new_tokens, counted_tokens=out[1], tokens_per_s=b * new_tokens / row["seconds"],
                       decode_steps_per_s=steps, model_bytes=nbytes, bandwidth_Bps=bandwidth,
                       kv_cache_bytes_final=kv_per_token * b * (prompt_len + new_tokens),
                       roofline_fraction=nbytes * steps / bandwidth if bandwidth else None)
            log(f"  sampling {weights} batch {b}: {row['tokens_per_s']:.1f} tok/s, {steps:.1f} steps/s"
                + (f", {row['roofline_fraction']:.1%} of the roofline" if bandwidth else ""))
    finally:
        gcfg.min_new_tokens = old
    return rows


def measure_perplexity(model, tok, arch, *, phase, weights, batch_sizes, examples, seq_len, prompt_len, deadline,
                       seed=1) -> list[dict]:
    """premem_kit.inference.target_nll on `examples` examples of exactly seq_len tokens (prompt_len prompt)."""
    from premem_kit import inference

    words, rows = Words(arch, seed), []
    prompts = [words.text(prompt_len - 1) for _ in range(examples)]
    targets = [" " + words.text(seq_len - prompt_len) for _ in range(examples)]
    inference.target_nll(model, tok, prompts[:2], targets[:2], batch_size=2, progress=False)  # warm-up
    for bs in batch_sizes:
        rows.append(row := {"phase": phase, "weights": weights, "batch_size": bs, "examples": examples,
                            "seq_len": seq_len, "prompt_len": prompt_len})
        if time.time() > deadline:
            row["status"] = SKIPPED
            continue
        if (out := timed(row, lambda: inference.target_nll(model, tok, prompts, targets, batch_size=bs,
                                                           progress=False))) is None:
            continue
        good = [x for x in out[0] if x == x]
        row.update(examples_per_s=examples / row["seconds"], tokens_per_s=examples * seq_len / row["seconds"],
                   target_tokens=sum(out[1]), mean_nll=sum(good) / len(good) if good else None)
        log(f"  perplexity {weights} batch {bs}: {row['examples_per_s']:.1f} examples/s")
    return rows


def _step_timer(deadline: float, min_steps: int):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Synchronized seconds per optimizer step and of the update alone; stops past the deadline once
        min_steps are done; never lets the Trainer save."""
        steps, updates, t0, t_opt = [], [], 0.0, 0.0

        def on_step_begin(self, args, state, control, **kw):
            sync()
            self.t0 = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kw):
            sync()
            self.t_opt = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            sync()
            self.updates = self.updates + [time.perf_counter() - self.t_opt]

        def on_step_end(self, args, state, control, **kw):
            sync()
            self.steps = self.steps + [time.perf_counter() - self.t0]
            control.should_save = False
            if time.time() > deadline and len(self.steps) >= min_steps:
                control.should_training_stop = True

        def on_epoch_end(self, args, state, control, **kw):
            control.should_save = False

    return StepTimer()


def measure_training(cfg: dict, model, tok, arch, *, kind, seq_len, grad_ckpt, steps, run_root, deadline,
                     recipe: dict, optimizer=None, seed=2):
    """`steps` optimizer steps of the kit's Trainer at gradient accumulation 1 (micro batch from cfg, every
    example exactly seq_len tokens). Returns (row, optimizer): a later run reuses a paged optimizer
    instead of allocating another that is never freed."""
    import torch
    from transformers.trainer_callback import ProgressCallback
    from transformers.trainer_utils import SaveStrategy

    from premem_kit import training

    mb = cfg["micro_batch_size"]
    row = {"kind": kind, "seq_len": seq_len, "micro_batch": mb, "gradient_checkpointing": grad_ckpt,
           "optimizer": cfg["optimizer"], "lora_r": cfg["lora_r"], "attn_implementation": cfg.get("attn_implementation"),
           "mixed_precision": cfg.get("mixed_precision"), "steps_requested": steps,
           "recipe_batch_size": recipe["batch_size"], "recipe_accumulation": recipe["batch_size"] // mb}
    if time.time() > deadline:
        return dict(row, status=SKIPPED), optimizer
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not grad_ckpt:
        (getattr(hf, "activation_checkpointing_disable", None) or hf.gradient_checkpointing_disable)()
    words, plen = Words(arch, seed), max(2, min(seq_len // 3, seq_len - 1))
    examples = [{"id": f"bench/{i}", "prompt": words.text(plen - 1), "target": " " + words.text(seq_len - plen)}
                for i in range(mb * steps)]
    run = Path(run_root) / f"{kind}_{seq_len}_{'gc' if grad_ckpt else 'nogc'}"
    c = dict(cfg, batch_size=mb, gradient_checkpointing=grad_ckpt, num_epochs=1, run_dir=str(run), logging_steps=1,
             max_length=max(cfg["max_length"], seq_len), warmup_steps=0, warmup_ratio=0.0, save_every_steps=None)
    trainer = training.build_trainer(c, run, examples, tok, model)
    trainer.args.save_strategy = SaveStrategy.NO
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(timer := _step_timer(deadline, min(2, steps)))
    trainer.optimizer = optimizer
    free_memory()
    row["allocated_before_gb"] = mem_gb("now")
    timed(row, trainer.train)
    row["peak_reserved_gb"] = mem_gb("peak_reserved")
    if trainer.optimizer is not None:
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        sizes = [(bool(getattr(v, "is_paged", False)), v.numel() * v.element_size())
                 for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
        row.update(optimizer_state_gb=sum(n for p, n in sizes if not p) / 1e9,
                   paged_optimizer_state_gb=sum(n for p, n in sizes if p) / 1e9)
    if t := timer.steps:
        step = statistics.median(t[1:] or t)
        upd = statistics.median(timer.updates[1:] or timer.updates) if timer.updates else 0.0
        row.update(steps_done=len(t), step_times_s=t, first_step_s=t[0], step_s=step, update_s=upd,
                   fwd_bwd_s=step - upd, tokens_per_s=mb * seq_len / step, examples_per_s=mb / step,
                   recipe_optimizer_step_s=row["recipe_accumulation"] * (step - upd) + upd)
    if cuda():
        total = row["peak_reserved_gb"] * 1e9 + row.get("paged_optimizer_state_gb", 0) * 1e9
        row.update(peak_with_paged_gb=total / 1e9, fits_80gb=row["status"] == "ok" and total <= FITS_80GB_BYTES)
    model.zero_grad(set_to_none=True)
    trainer.accelerator.free_memory()
    del trainer, timer
    free_memory()
    shutil.rmtree(run, ignore_errors=True)
    log(f"  {kind} seq {seq_len} mb {mb} gc {grad_ckpt}: " + (f"{row['step_s']:.3f} s/step, {row['tokens_per_s']:.0f}"
        f" tok/s, peak {row['peak_allocated_gb']} GB" if "step_s" in row else row["status"]))
    return row, optimizer
