"""The arithmetic bench/bench_gpu.py judges its rows by, apart from the measurements (bench/gpu_measure.py):
the bytes the decode steps of a generate call must read (roofline), the state bitsandbytes' paged 8-bit
AdamW keeps, and which batch sizes the kit's forward passes really ran at. tests/test_bench_gpu.py checks
each on hand-computed cases."""
from __future__ import annotations

import math

PAGED_MIN_NUMEL = 100_000  # bitsandbytes pages the state of tensors this large (get_state_buffer), no smaller
MIN_8BIT_NUMEL = 4096  # bitsandbytes' min_8bit_size: smaller tensors get 32-bit state


def hf_model(model):
    """The transformers model under a PEFT wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def kv_bytes_per_token(arch: dict, elem_bytes: int) -> int:
    """K and V of one position in every layer."""
    head = arch.get("head_dim") or arch["hidden_size"] // arch["num_attention_heads"]
    kv_heads = arch.get("num_key_value_heads") or arch["num_attention_heads"]
    return 2 * arch["num_hidden_layers"] * kv_heads * head * elem_bytes


def decode_traffic(*, weight_bytes: int, embed_bytes: int, tied: bool, kv_per_token: int, batch: int,
                   prompt_len: int, new_tokens: int) -> dict:
    """Bytes the decode steps of one generate call must read from memory, the prefill excluded. The prefill
    makes the first new token; each of the other new_tokens - 1 steps reads every weight once, except an
    input embedding that is not also the output layer (only `batch` rows of it are looked up), and the KV
    cache of every position so far: step j (1 .. new_tokens - 1) attends over prompt_len + j positions.
    (The contexts here, a few hundred tokens, are shorter than any sliding window.)"""
    steps = new_tokens - 1
    streamed = weight_bytes - (0 if tied else embed_bytes)
    positions = steps * prompt_len + steps * (steps + 1) // 2
    kv = kv_per_token * batch * positions
    return {"decode_steps": steps, "streamed_weight_bytes": streamed, "kv_read_bytes": kv,
            "decode_read_bytes": streamed * steps + kv}


def roofline_fraction(read_bytes: float, decode_s, bandwidth):
    """The share of the memory bandwidth the decode steps used: bytes read / seconds / bandwidth."""
    return read_bytes / decode_s / bandwidth if bandwidth and decode_s and decode_s > 0 else None


def embedding_info(model) -> tuple[int, bool, int]:
    """(bytes of the input embedding, whether the output layer is the same tensor, bytes per element)."""
    hf = hf_model(model)
    w, out = hf.get_input_embeddings().weight, hf.get_output_embeddings()
    tied = out is not None and getattr(out, "weight", None) is not None and out.weight.data_ptr() == w.data_ptr()
    return w.numel() * w.element_size(), tied, w.element_size()


def optimizer_state_bytes(model, optimizer: str):
    """bitsandbytes' 8-bit AdamW state of the trainable parameters, by its rules: two states per tensor,
    one byte per element each (plus an fp32 absmax per 256-element block) for tensors of at least 4,096
    elements; four bytes each for smaller tensors and for every nn.Embedding weight (the HF Trainer registers
    a 32-bit override for embeddings; with tied embeddings that is the output layer too). The two state
    buffers of a tensor of at least 1e5 elements are paged (CUDA managed memory), the absmax never.
    Returns {"total", "paged"} in bytes, None for an optimizer other than paged_adamw_8bit."""
    if optimizer != "paged_adamw_8bit":
        return None
    import torch

    emb = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    seen, total, paged = set(), 0, 0
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        states, absmax = (8 * n, 0) if id(p) in emb or n < MIN_8BIT_NUMEL else (2 * n, 8 * math.ceil(n / 256))
        total += states + absmax
        paged += states if n >= PAGED_MIN_NUMEL else 0
    return {"total": total, "paged": paged}


def measured_state_bytes(optimizer) -> dict:
    """Bytes of an optimizer's state tensors (bitsandbytes' shared quantization maps left out), and of
    those that are paged."""
    import torch

    total = paged = 0
    for st in optimizer.state.values():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and not k.startswith("qmap"):
                total += v.numel() * v.element_size()
                paged += v.numel() * v.element_size() if getattr(v, "is_paged", False) else 0
    return {"total": total, "paged": paged}


class ForwardBatches:
    """Batch sizes of the forward passes that completed, from a hook on the output layer (every forward of
    sample and target_nll ends there): the kit halves a batch after an out-of-memory and retries, silently,
    and this tells."""

    def __init__(self, model):
        self.sizes: list[int] = []
        self._hook = hf_model(model).get_output_embeddings().register_forward_hook(
            lambda mod, args, out: self.sizes.append(int(out.shape[0])))

    def close(self):
        self._hook.remove()
