"""DistributedDataParallel training on CPU: 2 processes, gloo backend, tiny model, 2 steps per epoch."""

import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import RandomSampler

from pipeline.core.distributed import RankSampler
from pipeline.stages.train import Trainer
from tests.conftest import tiny_config


def test_rank_sampler_splits_the_single_process_draw():
    per_rank, world, seed = 6, 3, 42042
    shares = [list(RankSampler(10, per_rank, seed, r, world)) for r in range(world)]
    assert all(len(s) == per_rank for s in shares)
    draw = list(RandomSampler(range(10), num_samples=per_rank * world, generator=torch.Generator().manual_seed(seed)))
    assert [draw[i] for i in range(len(draw))] == [shares[i % world][i // world] for i in range(len(draw))]
    assert list(RankSampler(10, per_rank, seed + 1, 0, world)) != shares[0]  # a new epoch, a new draw


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: Path, root: Path) -> None:
    """Three runs in one process group: uninterrupted (rank 1 in a folder of its own), then killed after
    epoch 1 on every rank, then resumed by new Trainers (as new processes would)."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for phase, runs in (("a", root / ("a" if rank == 0 else "a1")), ("b1", root / "b"), ("b2", root / "b")):
            t = Trainer(tiny_config(data, runs), quiet=True)
            if phase == "b1":
                real = t._write_history

                def crash_after_checkpoint(real=real):
                    real()
                    raise KeyboardInterrupt

                t._write_history = crash_after_checkpoint
            try:
                t.fit()
            except KeyboardInterrupt:
                pass
            state = {"model": t.model.state_dict(), "history": t.history, "epoch": t.epoch}
            torch.save(state, root / f"{phase}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _metrics(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_ddp_two_processes_gloo(tiny_data, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), tiny_data, tmp_path), nprocs=2, join=True)
    a, b1, b = (
        [torch.load(tmp_path / f"{p}.rank{r}.pt", weights_only=False) for r in range(2)] for p in ("a", "b1", "b2")
    )
    # Only rank 0 writes: rank 1's own run folder stays empty.
    run_dir = tmp_path / "a" / "tiny" / "fold0"
    assert {p.name for p in run_dir.iterdir()} == {"config.yaml", "history.csv", "last.pt", "best.pt"}
    assert not any((tmp_path / "a1").rglob("*.*"))
    # Gradients averaged and buffers synchronized: both ranks hold the same model after 2 epochs of 2 steps.
    assert a[0]["epoch"] == a[1]["epoch"] == 2
    for k, v in a[0]["model"].items():
        assert torch.equal(v, a[1]["model"][k]), f"{k} differs between ranks"
    # Metrics are reduced over the ranks: identical on both, and what rank 0 recorded.
    assert _metrics(a[0]["history"]) == _metrics(a[1]["history"])
    ckpt = torch.load(run_dir / "last.pt", weights_only=False)
    assert ckpt["history"] == a[0]["history"] and 0 <= a[0]["history"][-1]["val_dice"] <= 1
    init = Trainer(tiny_config(tiny_data, tmp_path / "init"), quiet=True).model.state_dict()
    assert any(not torch.equal(init[k], a[0]["model"][k]) for k in init)
    # Killed after epoch 1 on every rank, then resumed from rank 0's last.pt: as if uninterrupted.
    assert b1[0]["epoch"] == b1[1]["epoch"] == 1
    assert b[0]["epoch"] == 2 and _metrics(b[0]["history"]) == _metrics(a[0]["history"])
    for k, v in a[0]["model"].items():
        assert torch.equal(v, b[0]["model"][k]) and torch.equal(v, b[1]["model"][k]), f"{k} differs after resume"


def _device_worker(rank: int, world: int, port: int, out: Path) -> None:
    """One torchrun rank: joins the group through ``distributed.init`` as the CLI does, maps the devices."""
    import json
    import os

    from pipeline.core import distributed

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    info = distributed.init("cpu", backend="gloo")
    try:
        mine = [distributed.rank_device(d, info) for d in ("cuda:0", "cuda", "cuda:3", "cpu")]
        everyone = [None] * world
        dist.all_gather_object(everyone, mine)
        if rank == 0:
            out.write_text(json.dumps(everyone))
    finally:
        distributed.shutdown()


def test_torchrun_ranks_get_one_gpu_each_whatever_device_was_asked(tmp_path):
    """--device cuda:0 (or DEVICE=, or a config's device:) must not put every rank on GPU 0."""
    import json

    mp.spawn(_device_worker, args=(2, _free_port(), tmp_path / "devices.json"), nprocs=2, join=True)
    assert json.loads((tmp_path / "devices.json").read_text()) == [
        ["cuda:0", "cuda:0", "cuda:0", "cpu"],
        ["cuda:1", "cuda:1", "cuda:1", "cpu"],
    ]
