"""torch.distributed glue for ``torchrun``: who am I, which device, reduce, barrier.

``torchrun --nproc_per_node=G [--nnodes=H --rdzv-backend=c10d --rdzv-endpoint=host:port]`` sets
RANK, WORLD_SIZE and LOCAL_RANK for every process; without them everything here is a no-op and
the pipeline runs as a single process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import RandomSampler, Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (1 process without it)."""
    return DistInfo(
        int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
    )


def current() -> DistInfo:
    """The initialized process group's rank/world (a single process when none is initialized)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def is_main() -> bool:
    return current().is_main


def rank_device(device: str, info: DistInfo) -> str:
    """The device of this rank under torchrun: one GPU per process, ``cuda:LOCAL_RANK``.

    Every CUDA choice maps there: ``auto`` with a GPU, ``cuda`` and ``cuda:N`` (from ``--device``,
    ``DEVICE=`` or a config's ``device:``), since an index given to all ranks would put them all on
    one GPU (NCCL "Duplicate GPU", or every shard on GPU N). ``cpu`` stays ``cpu``.
    """
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        if ":" in device and info.is_main:
            print(
                f"note: under torchrun every rank uses cuda:LOCAL_RANK; the index in {device} is ignored",
                file=sys.stderr,
            )
        return f"cuda:{info.local_rank}"
    return "cpu" if device == "auto" else device


def init(device: str, timeout: timedelta = timedelta(minutes=30), backend: str | None = None) -> DistInfo:
    """Join the process group torchrun set up (NCCL on GPUs, gloo on CPU); no-op for 1 process."""
    info = env_info()
    if info.world <= 1 or (dist.is_available() and dist.is_initialized()):
        return info
    if backend is None:
        backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend, timeout=timeout)
    return info


@contextmanager
def process_group(
    device: str, timeout: timedelta = timedelta(minutes=30), backend: str | None = None
) -> Iterator[tuple[DistInfo, str]]:
    """``with process_group(device, timeout) as (info, device):`` the command line's torchrun setup.

    Under torchrun (WORLD_SIZE > 1): this rank's device (``rank_device``), the process group joined
    with it (``init``) and left on the way out, however the block ends. A single process: (one
    process, ``device`` as given), nothing joined.
    """
    info = env_info()
    if info.world > 1:
        device = rank_device(device, info)
        init(device, timeout=timeout, backend=backend)
    try:
        yield info, device
    finally:
        shutdown()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all ranks (float64; identity for a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart after the last DDP forward)."""
    if dist.is_available() and dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, 0)


class RankSampler(Sampler):
    """DDP: rank r's share (every world-th index) of one seeded random draw made identically on every rank.

    Like DistributedSampler with a per-epoch seed (``set_epoch``), but the draw is the
    single-process sampler's, so an epoch covers the same images whatever the number of ranks.
    """

    def __init__(self, n: int, per_rank: int, seed: int, rank: int, world: int):
        self.n, self.per_rank, self.seed, self.rank, self.world = n, per_rank, seed, rank, world

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        order = list(RandomSampler(range(self.n), num_samples=self.per_rank * self.world, generator=g))
        return iter(order[self.rank :: self.world])

    def __len__(self) -> int:
        return self.per_rank
