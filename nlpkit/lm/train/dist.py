"""Distributed training under torchrun: the process group (gloo on CPU, nccl on GPU); only rank 0 writes."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- processes and signals


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    def all_max(self, values: list[float]) -> list[float]:
        """The element-wise maximum over all processes (stop flags, elapsed time)."""
        if self.world == 1:
            return values
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.tolist()

    def all_mean(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world


@contextlib.contextmanager
def distributed(device: str) -> Iterator[Dist]:
    """Join the torchrun job described by the environment (WORLD_SIZE, RANK, LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Dist(device=device)
        return
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield Dist(dist.get_rank(), dist.get_world_size(), device)
    finally:
        dist.destroy_process_group()


def autocast(device: str) -> Any:
    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def training_session(device: str, threads: int | None, out: Path, wait: bool) -> Iterator[Dist]:
    """What every training run holds while it runs: torch's threads, the process group on the
    resolved ``device``, and (rank 0) the output folder and its ``train.lock``."""
    from nlpkit.io.deps import import_torch, resolve_device
    from nlpkit.io.files import lock_for

    device = resolve_device(device)
    if threads:
        import_torch().set_num_threads(threads)
    with distributed(device) as d:
        if d.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        with lock_for(out / "train", wait=wait) if d.rank == 0 else contextlib.nullcontext():
            yield d
