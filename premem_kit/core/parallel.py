"""Process state for data-parallel training and sharded evaluation (accelerate)."""
from __future__ import annotations

import os


def dist_state():
    """accelerate's process state. On a machine without a GPU, `accelerate launch --multi_gpu
    --num_processes N` (torchrun underneath) starts N CPU processes; PartialState only joins them into
    one gloo process group when told cpu=True, otherwise each would train alone."""
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=cpu) if cpu else PartialState()


def gather_rows(rows: list[dict], world: int) -> list[dict]:
    """Every process's rows on every process (a no-op with one process)."""
    if world == 1:
        return rows
    from accelerate.utils import gather_object

    return gather_object(rows)
