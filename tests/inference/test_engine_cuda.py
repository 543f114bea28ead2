"""The engine on CUDA (skipped without a GPU; `make gpu-check` runs them first): pinned copies, a second GPU."""

import numpy as np
import pytest
import torch

from pipeline.inference.engine import Engine, Member, blend
from pipeline.models.unet import build_model
from tests.conftest import H, W, tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")


def _engine(tiny_data, tmp_path, device: str) -> Engine:
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    torch.manual_seed(0)
    member = Member("m", [build_model(cfg.model)], 32, 48, ["hflip"])
    return Engine([member], torch.device(device), "fp32", batch_size=3, num_workers=2)


def _pinned_and_synchronous(engine: Engine, images) -> tuple[np.ndarray, np.ndarray]:
    """The masks through the pinned, non-blocking copies that ``masks`` hands over once their event has
    completed, and the same masks copied synchronously; one engine, so the same cuDNN algorithms."""
    pinned = np.concatenate([np.stack(m) for _, m, _ in engine.masks(images, [1], 128)])
    synchronous = np.stack([(blend(q, [1]) >= 128).cpu().numpy() for _, q in engine.predict(images)])
    return pinned, synchronous


def test_pinned_copies_of_the_masks_are_complete(tiny_data, tmp_path):
    images = sorted((tiny_data / "train").glob("*.jpg"))[:40]  # 14 batches of 3, the last one partial
    pinned, synchronous = _pinned_and_synchronous(_engine(tiny_data, tmp_path, "cuda"), images)
    assert pinned.shape == (40, H, W) and np.array_equal(pinned, synchronous)


@two_gpus
def test_engine_on_the_second_gpu(tiny_data, tmp_path):
    """cuda:1 in one process: the device made current, the copies guarded by an event on cuda:1's stream."""
    images = sorted((tiny_data / "train").glob("*.jpg"))[:40]
    engine = _engine(tiny_data, tmp_path, "cuda:1")
    assert torch.cuda.current_device() == 1
    pinned, synchronous = _pinned_and_synchronous(engine, images)
    assert np.array_equal(pinned, synchronous)
