"""torchrun glue (pipeline/core/distributed.py): the rank sampler, and each rank's device."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import RandomSampler

from pipeline.core import distributed
from pipeline.core.distributed import RankSampler
from tests.conftest import free_port as _free_port


def test_rank_sampler_splits_the_single_process_draw():
    per_rank, world, seed = 6, 3, 42042
    shares = [list(RankSampler(10, per_rank, seed, r, world)) for r in range(world)]
    assert all(len(s) == per_rank for s in shares)
    draw = list(RandomSampler(range(10), num_samples=per_rank * world, generator=torch.Generator().manual_seed(seed)))
    assert [draw[i] for i in range(len(draw))] == [shares[i % world][i // world] for i in range(len(draw))]
    assert list(RankSampler(10, per_rank, seed + 1, 0, world)) != shares[0]  # a new epoch, a new draw


def _device_worker(rank: int, world: int, port: int, out: Path) -> None:
    """One torchrun rank: joins the group through ``distributed.process_group`` as the CLI does, maps the
    devices, and has left the group once the block ends."""
    import json
    import os

    from pipeline.core import distributed

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    with distributed.process_group("cpu", backend="gloo") as (info, device):
        mine = [distributed.rank_device(d, info) for d in ("cuda:0", "cuda", "cuda:3", "cpu")] + [device]
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
    if rank == 0:
        out.write_text(json.dumps({"devices": everyone, "left": not dist.is_initialized()}))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_ranks_get_one_gpu_each_whatever_device_was_asked(tmp_path):
    """--device cuda:0 (or DEVICE=, or a config's device:) must not put every rank on GPU 0."""
    import json

    mp.spawn(_device_worker, args=(2, _free_port(), tmp_path / "devices.json"), nprocs=2, join=True)
    assert json.loads((tmp_path / "devices.json").read_text()) == {
        "devices": [["cuda:0", "cuda:0", "cuda:0", "cpu", "cpu"], ["cuda:1", "cuda:1", "cuda:1", "cpu", "cpu"]],
        "left": True,
    }


def test_without_torchrun_the_process_group_is_one_process_on_the_device_asked(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    with distributed.process_group("cuda:3") as (info, device):
        assert (info.rank, info.world, device) == (0, 1, "cuda:3") and not dist.is_initialized()
