"""What only a GPU can show. Every test here skips without CUDA; `make gpu-check` runs this file first.

The same branches (autocast, channels_last, fp16 GradScaler) also run on CPU in tests/test_precision.py;
here they run on the device they are written for, with what CPU cannot show: cuDNN autotuning,
CUDA RNG states, the pinned device-to-host copy and a second GPU.
"""

import numpy as np
import pytest
import torch

from pipeline.inference.engine import Engine, Member, blend
from pipeline.models.unet import build_model
from pipeline.stages.train import Trainer, run
from tests.conftest import H, W, tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_channels_last_train_and_oof(tiny_data, tmp_path, amp):
    cfg = tiny_config(tiny_data, tmp_path / "runs", device="cuda", **{"train.amp": amp, "predict.amp": amp})
    summary = run(cfg, quiet=True)
    assert 0 <= summary["mean_dice"] <= 1 and summary["n_images"] == 32 and summary["precision"] == amp


def test_auto_is_bf16_and_channels_last_on_cuda(tiny_data, tmp_path):
    t = Trainer(tiny_config(tiny_data, tmp_path / "runs", device="cuda", **{"train.amp": "auto"}), quiet=True)
    want = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    assert t.precision == want and t.channels_last and t.scaler.is_enabled() == (want == "fp16")


def test_training_turns_on_cudnn_autotuning(tiny_data, tmp_path):
    torch.backends.cudnn.benchmark = False
    Trainer(tiny_config(tiny_data, tmp_path / "runs", device="cuda"), quiet=True)
    assert torch.backends.cudnn.benchmark  # from fold 0 on, not only once an inference engine was built


def test_resume_on_a_host_with_another_number_of_gpus(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs", device="cuda", **{"train.epochs": 2})
    t = Trainer(cfg, quiet=True)
    t.train_epoch()
    t.epoch = 1
    state = t._state()
    assert isinstance(state["rng"]["cuda"], torch.Tensor)  # this device's state only
    # As written before by a run on a host with one more GPU than this one: a state per visible GPU.
    state["rng"]["cuda"] = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())] * 2
    torch.save(state, cfg.run_dir / "last.pt")
    resumed = Trainer(cfg, quiet=True)
    assert resumed.epoch == 1
    resumed.fit()
    assert resumed.finished


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
