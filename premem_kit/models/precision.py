"""Precision by device: the weights' dtype, the Trainer's mixed precision and the 4-bit compute dtype,
chosen once, with the reason (logged when training starts and written to RUN/precision.json).

    CPU                          fp32 weights, no autocast
    GPU with bf16 units (>= 8.0: A100, H100, L4, RTX 30xx+)
                                 bf16 weights, pure bf16 (4-bit compute in bf16)
    GPU without (< 8.0: T4, V100)
                                 fp32 master weights, fp16 autocast with loss scaling (the Trainer's fp16),
                                 4-bit compute in fp16. torch.cuda.is_bf16_supported() says yes on a T4 too
                                 (it counts emulation), so the kit looks at the compute capability.

A config that names its dtype or mixed_precision (the full-finetuning recipes: fp32 weights, bf16 compute)
keeps it; on a GPU without bf16 units the reason says that bf16 runs emulated there, slowly.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

DTYPES = ("bf16", "fp16", "fp32")


@dataclass(frozen=True)
class Precision:
    weights: str       # bf16 | fp16 | fp32: the dtype the model is loaded in (master weights when training)
    autocast: str      # bf16 | fp16 | no: the Trainer's mixed precision
    compute_4bit: str  # bf16 | fp16: bitsandbytes' compute dtype for 4-bit layers
    device: str
    reason: str

    def torch_dtype(self, which: str = "weights"):
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[getattr(self, which)]

    def as_dict(self) -> dict:
        return asdict(self)


def choose(dtype: str, mixed_precision: str, device: str, capability: tuple[int, int] | None = None) -> Precision:
    """The precision for config values dtype / mixed_precision ("auto" or a choice) on device "cpu" or
    "cuda" with its compute capability (major, minor)."""
    if device == "cpu":
        weights = "fp32" if dtype == "auto" else dtype
        autocast = "no"  # the Trainer's bf16/fp16 flags are for GPUs; the kit's CPU runs compute as stored
        why = "CPU: fp32 weights, no autocast" if dtype == "auto" else f"CPU: {weights} weights as configured"
    else:
        native_bf16 = capability is not None and capability[0] >= 8
        name = f"compute capability {capability[0]}.{capability[1]}" if capability else "unknown capability"
        if native_bf16:
            weights = "bf16" if dtype == "auto" else dtype
            why = f"GPU with bf16 units ({name})"
        else:
            weights = "fp32" if dtype == "auto" else dtype
            why = f"GPU without bf16 units ({name}): fp32 master weights, fp16 autocast with loss scaling"
        autocast = mixed_precision if mixed_precision != "auto" else (
            {"bf16": "bf16", "fp16": "fp16"}.get(weights, "no") if native_bf16 or weights != "fp32" else "fp16")
        if not native_bf16 and "bf16" in (weights, autocast):
            why += "; bf16 as configured runs emulated on this GPU, slowly (set dtype: fp32 and mixed_precision: fp16)"
    compute = "fp16" if "fp16" in (weights, autocast) else "bf16"
    return Precision(weights, autocast, compute, device, f"{why}; weights {weights}, autocast {autocast}, "
                                                        f"4-bit compute {compute}")


def for_this_machine(dtype: str, mixed_precision: str) -> Precision:
    """choose() for the device this process runs on."""
    import torch

    if not torch.cuda.is_available():
        return choose(dtype, mixed_precision, "cpu")
    return choose(dtype, mixed_precision, "cuda", torch.cuda.get_device_capability())
