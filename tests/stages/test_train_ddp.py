"""DistributedDataParallel training on CPU: 2 processes, gloo backend, tiny model, 2 steps per epoch."""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pipeline.stages.train import Trainer
from tests.conftest import free_port as _free_port
from tests.conftest import tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


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
