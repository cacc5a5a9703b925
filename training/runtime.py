"""Where a training process runs: its rank in a torchrun job, its device and its precision.

Under torchrun (WORLD_SIZE > 1) each process joins the job's process group (NCCL on GPU, gloo on CPU);
a plain `python` run is the one-process case of the same code.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Runtime:
    """Where this process runs: its rank in a torchrun job, its device, its precision."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def no_autocast(self):
        return torch.autocast(self.device.type, enabled=False)

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel around `module` in a torchrun job, else `module` itself."""
        if not self.distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any of them."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def gather(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def init_runtime(precision: str = "auto", device: str | None = None) -> Runtime:
    """Join the torchrun job when there is one (NCCL on GPU, gloo on CPU) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if precision == "auto":
        precision = "bf16" if dev.type == "cuda" else "fp32"
    return Runtime(rank, world_size, local_rank, dev, precision)


def shutdown_runtime() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
