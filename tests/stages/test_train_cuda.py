"""Training on CUDA (skipped without a GPU; `make gpu-check` runs them first): AMP, channels_last,
cuDNN autotuning, resume on another number of GPUs."""

import pytest
import torch

from pipeline.stages.train import Trainer, run
from tests.conftest import tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


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
