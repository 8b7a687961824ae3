"""The process group: joining it under torchrun, wrapping the model for it, and numbers summed
or gathered over its ranks (one all-reduce a step)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import fields
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def setup_device(choice: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the torchrun process group when launched by it."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(choice)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {choice}: CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def parallel(
    model: nn.Module, world: int, device: torch.device, precision: str
) -> tuple[nn.Module, Any, bool]:
    """The model as the loop runs it (DDP across ranks), its autocast, and whether bf16."""
    if world > 1:
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    )
    return model, autocast, use_bf16


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class Summed:
    """A dataclass of tensors and dicts of tensors; `all_sum` adds them up over the ranks in
    one all-reduce (packed into one float64 buffer and unpacked by field name)."""

    def all_sum(self) -> Any:
        named: dict[tuple[str, str | None], torch.Tensor] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            items = value.items() if isinstance(value, dict) else [(None, value)]
            named |= {(f.name, key): tensor for key, tensor in items}
        flat = torch.cat([t.detach().double().reshape(-1) for t in named.values()])
        if dist.is_initialized():
            dist.all_reduce(flat)
        parts = dict(zip(named, flat.cpu().split([t.numel() for t in named.values()]), strict=True))
        summed = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            keys = list(value) if isinstance(value, dict) else [None]
            shaped = {k: parts[(f.name, k)].reshape(named[(f.name, k)].shape) for k in keys}
            summed[f.name] = shaped if isinstance(value, dict) else shaped[None]
        return type(self)(**summed)
