"""The measurements of bench/bench_gpu.py (which runs them per model and writes the JSON): helpers,
the random-weight models (architecture JSON -> config, built once and saved with a word-level tokenizer),
and timed calls of the kit's sampling, perplexity and Trainer (through bench/kit_api.py), each returning rows
for the JSON; the arithmetic the rows are judged by is in bench/gpu_arith.py."""
from __future__ import annotations

import contextlib
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
for _p in (str(ROOT), str(HERE)):  # premem_kit; cost_estimate (the GPU table), kit_api
    if _p not in sys.path:
        sys.path.insert(0, _p)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import cost_estimate  # noqa: E402
import kit_api  # noqa: E402  (every call into premem_kit)
from gpu_arith import (  # noqa: E402
    ForwardBatches, decode_traffic, embedding_info, hf_model, kv_bytes_per_token, measured_state_bytes,
    optimizer_state_bytes, roofline_fraction)

FITS_80GB_BYTES = 78.5 * 2 ** 30  # an "80 GB" card shows 79.2 GiB to CUDA, ~0.7 GiB of it for the context
SKIPPED = "skipped: time budget"
PAGED_MARGIN_BYTES = 2 * 2 ** 30  # free memory left over when the paged state is first allocated
WARMUP_NEW_TOKENS = 4  # untimed generate before each timed batch: its prefill and decode shapes


class BenchError(RuntimeError):
    pass


class WouldOversubscribe(BenchError):
    """The paged optimizer state would not fit in the GPU memory that is free: asking CUDA for more managed
    memory than the card has free can hang the GPU, so the run stops before the first optimizer step."""


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


def weights_bytes(arch: dict, dtype_bytes: int = 2) -> int:
    """Bytes of the model's weights as saved (tied tensors once), counted on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(make_config(arch))
    return sum(p.numel() for p in model.parameters()) * dtype_bytes


def disk_free(path) -> int:
    probe = Path(path).resolve()
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def ensure_weights(name: str, arch: dict, weights_dir) -> dict:
    """Build the random-weight model on the device in bf16 and save it with its tokenizer, once: a folder
    with a matching bench_build.json is reused. The free disk is checked before anything is built."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16
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
    nbytes = weights_bytes(arch, torch.finfo(dtype).bits // 8)
    if (free := disk_free(weights_dir)) < nbytes * 1.02 + 1e9:
        raise BenchError(f"{weights_dir}: {free / 1e9:.1f} GB free, {name} needs {nbytes / 1e9:.1f} GB + 1 GB")
    t0 = time.time()
    with torch.device("cuda" if cuda() else "cpu"):
        model = AutoModelForCausalLM.from_config(make_config(arch), dtype=dtype)
    sync()
    t_init = time.time() - t0
    t1 = time.time()
    model.save_pretrained(partial, max_shard_size="4GB")
    build_tokenizer(arch).save_pretrained(partial)
    info = {"arch_sha": sig, "dtype": str(dtype), "params": sum(p.numel() for p in model.parameters()),
            "bytes": sum(p.numel() * p.element_size() for p in model.parameters()), "init_s": round(t_init, 2),
            "save_s": round(time.time() - t1, 2), "disk_free_before_gb": round(free / 1e9, 2),
            "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    del model
    free_memory()
    write_json(partial / "bench_build.json", info)
    shutil.rmtree(folder, ignore_errors=True)  # an older build of ours (it had a bench_build.json)
    os.replace(partial, folder)
    return dict(info, cached=False, folder=str(folder))


def remove_weights(name: str, weights_dir) -> bool:
    """Delete a model's weights folder (and a partial build), and the weights folder itself once empty."""
    found = False
    for p in (Path(weights_dir) / name, Path(weights_dir) / f"{name}.partial"):
        if p.exists():
            shutil.rmtree(p)
            found = True
    with contextlib.suppress(OSError):
        Path(weights_dir).rmdir()
    return found


def host_rss_peak_gb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 3)


def load_context(cfg: dict):
    """Where the kit's load_base_model builds unquantized weights: on the GPU. transformers takes an active
    torch.device context as the device_map, so the weights go straight to the GPU instead of 16-37 GB
    through host memory and a .to('cuda') afterwards (what the kit does without a device_map)."""
    import torch

    if cuda() and cfg["quantization"] == "none":
        return torch.device("cuda", torch.cuda.current_device())
    return contextlib.nullcontext()


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


def _halved(row: dict, sizes: list[int], expected: list[int]) -> bool:
    if sizes == expected:
        return False
    row.update(status=f"oom: the kit halved the batch and ran at {sorted(set(sizes))}",
               forward_batches=sorted(set(sizes)))
    return True


# ----------------------------------------------------------------------------- measurements

def measure_sampling(model, tok, arch, *, phase, weights, batches, prompt_len, new_tokens, deadline, bandwidth,
                     seed=0) -> list[dict]:
    """The kit's sampling (kit_api.sample), one sample per prompt, all prompts in one generate call,
    prompt_len tokens in (with BOS) and exactly new_tokens out (min_new_tokens = max_new_tokens). Per batch
    size: an untimed warm-up at that batch and prompt length, a timed prefill (one new token), the timed
    call; decode seconds = call - prefill, and the roofline fraction = decode_traffic / decode seconds /
    bandwidth."""
    gcfg = hf_model(model).generation_config
    nbytes, (embed_bytes, tied, elem) = model_bytes(model), embedding_info(model)
    kvt, words, rows, old = kv_bytes_per_token(arch, elem), Words(arch, seed), [], gcfg.min_new_tokens
    watch = ForwardBatches(model)

    def run(prompts, n_new):
        gcfg.min_new_tokens = n_new
        return kit_api.sample(model, tok, prompts, n=1, max_new_tokens=n_new, batch_size=len(prompts), stop=None,
                              progress=False, seed=seed)

    try:
        for b in batches:
            rows.append(row := {"phase": phase, "weights": weights, "batch": b, "prompt_len": prompt_len,
                                "new_tokens": new_tokens, "sampling": "temperature 0.8, top_p 0.95 (kit defaults)"})
            if time.time() > deadline:
                row["status"] = SKIPPED
                continue
            prompts = [words.text(prompt_len - 1) for _ in range(b)]
            warm, pre = {}, {}
            for part, n_new in ((warm, WARMUP_NEW_TOKENS), (pre, 1)):
                if timed(part, lambda: run(prompts, n_new)) is None:
                    row.update(status="oom", error=part["error"], peak_allocated_gb=part["peak_allocated_gb"],
                               stage="warm-up" if part is warm else "prefill")
                    break
            if "status" in row:
                continue
            watch.sizes.clear()
            if (out := timed(row, lambda: run(prompts, new_tokens))) is None or \
                    _halved(row, watch.sizes, [b] * new_tokens):
                continue
            decode_s = row["seconds"] - pre["seconds"]
            tr = decode_traffic(weight_bytes=nbytes, embed_bytes=embed_bytes, tied=tied, kv_per_token=kvt, batch=b,
                                prompt_len=prompt_len, new_tokens=new_tokens)
            row.update(tokens=b * new_tokens, counted_tokens=out[1], tokens_per_s=b * new_tokens / row["seconds"],
                       prefill_s=pre["seconds"], decode_s=decode_s if decode_s > 0 else None,
                       decode_steps_per_s=tr["decode_steps"] / decode_s if decode_s > 0 else None, model_bytes=nbytes,
                       embedding_bytes=embed_bytes, tied_embeddings=tied, kv_bytes_per_token=kvt, **tr,
                       bandwidth_Bps=bandwidth, roofline_fraction=roofline_fraction(tr["decode_read_bytes"], decode_s,
                                                                                     bandwidth))
            log(f"  sampling {weights} batch {b}: {row['tokens_per_s']:.1f} tok/s, prefill {pre['seconds']:.3f} s"
                + (f", {row['roofline_fraction']:.1%} of the roofline" if row["roofline_fraction"] else ""))
    finally:
        gcfg.min_new_tokens = old
        watch.close()
    return rows


def measure_perplexity(model, tok, arch, *, phase, weights, batch_sizes, examples, seq_len, prompt_len, deadline,
                       seed=1) -> list[dict]:
    """The kit's teacher-forced perplexity (kit_api.target_nll) on `examples` examples of exactly seq_len
    tokens (prompt_len prompt); per batch size an untimed warm-up batch first."""
    words, rows, watch = Words(arch, seed), [], ForwardBatches(model)
    prompts = [words.text(prompt_len - 1) for _ in range(examples)]
    targets = [" " + words.text(seq_len - prompt_len) for _ in range(examples)]
    try:
        for bs in batch_sizes:
            rows.append(row := {"phase": phase, "weights": weights, "batch_size": bs, "examples": examples,
                                "seq_len": seq_len, "prompt_len": prompt_len})
            if time.time() > deadline:
                row["status"] = SKIPPED
                continue
            warm = {}
            if timed(warm, lambda: kit_api.target_nll(model, tok, prompts[:bs], targets[:bs], batch_size=bs,
                                                      progress=False)) is None:
                row.update(status="oom", error=warm["error"], stage="warm-up")
                continue
            watch.sizes.clear()
            out = timed(row, lambda: kit_api.target_nll(model, tok, prompts, targets, batch_size=bs, progress=False))
            if out is None or _halved(row, watch.sizes, [min(bs, examples - i) for i in range(0, examples, bs)]):
                continue
            good = [x for x in out[0] if x == x]
            row.update(examples_per_s=examples / row["seconds"], tokens_per_s=examples * seq_len / row["seconds"],
                       target_tokens=sum(out[1]), mean_nll=sum(good) / len(good) if good else None)
            log(f"  perplexity {weights} batch {bs}: {row['examples_per_s']:.1f} examples/s")
    finally:
        watch.close()
    return rows


def _step_timer(deadline: float, min_steps: int, before_first_update):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Synchronized seconds per optimizer step and of the update alone; stops past the deadline once
        min_steps are done; never lets the Trainer save; before_first_update(optimizer) before the first
        optimizer step."""
        steps, updates, t0, t_opt = [], [], 0.0, 0.0

        def on_step_begin(self, args, state, control, **kw):
            sync()
            self.t0 = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kw):
            if not self.steps:
                before_first_update(kw.get("optimizer"))
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


def paged_guard(row: dict, need_paged: int):
    """before_first_update for the step timer: when a paged optimizer is about to allocate its state, give
    PyTorch's cached blocks (the step's activations) back to CUDA first, and refuse, before anything is
    allocated, when the paged state would not fit in what is then free (with PAGED_MARGIN_BYTES to spare)."""
    def check(optimizer):
        opt = getattr(optimizer, "optimizer", optimizer)
        row["first_update_saw"] = {"optimizer": type(opt).__name__, "paged": bool(getattr(opt, "is_paged", False)),
                                   "state": any(opt.state.values()) if opt is not None else None}
        if not cuda() or not getattr(opt, "is_paged", False) or any(opt.state.values()):
            return
        import torch

        free_memory()
        free = torch.cuda.mem_get_info()[0]
        row["free_before_paged_state_gb"] = round(free / 1e9, 3)
        if need_paged + PAGED_MARGIN_BYTES > free:
            raise WouldOversubscribe(f"paged optimizer state {need_paged / 1e9:.1f} GB + {PAGED_MARGIN_BYTES / 2**30:.0f}"
                                     f" GiB margin > {free / 1e9:.1f} GB free on the GPU")
    return check


def measure_training(cfg: dict, model, tok, arch, *, kind, seq_len, grad_ckpt, steps, run_root, deadline,
                     recipe: dict, optimizer=None, seed=2):
    """`steps` optimizer steps of the kit's Trainer (kit_api.build_trainer) at gradient accumulation 1
    (micro batch from cfg, every example exactly seq_len tokens). Returns (row, optimizer): a later run
    reuses a paged optimizer instead of allocating another that is never freed."""
    from transformers.trainer_callback import ProgressCallback
    from transformers.trainer_utils import SaveStrategy

    mb = cfg["micro_batch_size"]
    row = {"kind": kind, "task": recipe.get("task"), "seq_len": seq_len, "micro_batch": mb,
           "gradient_checkpointing": grad_ckpt, "optimizer": cfg["optimizer"], "lora_r": cfg["lora_r"],
           "attn_implementation": cfg.get("attn_implementation"), "mixed_precision": cfg.get("mixed_precision"),
           "steps_requested": steps, "recipe": recipe.get("file"), "recipe_batch_size": recipe["batch_size"],
           "recipe_accumulation": recipe["batch_size"] // mb}
    if time.time() > deadline:
        return dict(row, status=SKIPPED), optimizer
    hf = hf_model(model)
    if not grad_ckpt:
        (getattr(hf, "activation_checkpointing_disable", None) or hf.gradient_checkpointing_disable)()
    if (expect := optimizer_state_bytes(model, cfg["optimizer"])) is not None:
        row.update(optimizer_state_expected_gb=expect["total"] / 1e9, paged_state_expected_gb=expect["paged"] / 1e9)
    words, plen = Words(arch, seed), max(2, min(seq_len // 3, seq_len - 1))
    examples = [{"id": f"bench/{i}", "prompt": words.text(plen - 1), "target": " " + words.text(seq_len - plen)}
                for i in range(mb * steps)]
    run = Path(run_root) / f"{kind}_{seq_len}_{mb}_{'gc' if grad_ckpt else 'nogc'}"
    c = dict(cfg, batch_size=mb, gradient_checkpointing=grad_ckpt, num_epochs=1, run_dir=str(run), logging_steps=1,
             max_length=max(cfg["max_length"], seq_len), warmup_steps=0, warmup_ratio=0.0, save_every_steps=None)
    trainer = kit_api.build_trainer(c, run, examples, tok, model)
    trainer.args.save_strategy = SaveStrategy.NO
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(timer := _step_timer(deadline, min(2, steps), paged_guard(row, (expect or {}).get("paged", 0))))
    trainer.optimizer = optimizer
    free_memory()
    row["allocated_before_gb"] = mem_gb("now")
    try:
        timed(row, trainer.train)
    except WouldOversubscribe as e:
        row.update(status=f"skipped: {e}")
    row["peak_reserved_gb"] = mem_gb("peak_reserved")
    if trainer.optimizer is not None:
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
        got = measured_state_bytes(optimizer)
        row.update(optimizer_state_gb=(got["total"] - got["paged"]) / 1e9, paged_optimizer_state_gb=got["paged"] / 1e9,
                   optimizer_state_total_gb=got["total"] / 1e9)
        if not any(optimizer.state.values()):
            optimizer = None  # never stepped: nothing to reuse
    if t := timer.steps:
        step = statistics.median(t[1:] or t)
        upd = statistics.median(timer.updates[1:] or timer.updates) if timer.updates else 0.0
        row.update(steps_done=len(t), step_times_s=t, first_step_s=t[0], step_s=step, update_s=upd,
                   fwd_bwd_s=step - upd, tokens_per_s=mb * seq_len / step, examples_per_s=mb / step,
                   recipe_optimizer_step_s=row["recipe_accumulation"] * (step - upd) + upd)
    if cuda():
        total = (row["peak_reserved_gb"] + row.get("paged_optimizer_state_gb", 0)) * 1e9
        row.update(peak_with_paged_gb=total / 1e9, fits_80gb=row["status"] == "ok" and total <= FITS_80GB_BYTES)
    model.zero_grad(set_to_none=True)
    trainer.accelerator.free_memory()
    del trainer, timer
    free_memory()
    shutil.rmtree(run, ignore_errors=True)
    log(f"  {kind} seq {seq_len} mb {mb} gc {grad_ckpt}: " + (f"{row['step_s']:.3f} s/step, {row['tokens_per_s']:.0f}"
        f" tok/s, peak {row['peak_allocated_gb']} GB" if "step_s" in row else row["status"]))
    return row, optimizer
