"""What only a GPU can show. Every test here skips without CUDA; `make gpu-check` runs this file first.

The same branches (autocast, channels_last, fp16 GradScaler) also run on CPU in tests/test_precision.py;
here they run on the device they are written for, with what CPU cannot show: cuDNN autotuning,
CUDA RNG states, the pinned device-to-host copy and a second GPU.
"""

import gzip

import numpy as np
import pytest
import torch

from pipeline import rle
from pipeline.engine import Engine, Member
from pipeline.models import build_model
from pipeline.submission import make_submission
from pipeline.train import Trainer, run
from tests.conftest import H, W, tiny_config, write_recipe

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


def _recipe(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    torch.save({"config": cfg.to_dict(), "model": build_model(cfg.model).state_dict()}, path)
    member = {"name": "m", "weight": 1, "checkpoints": [str(path)], "height": 32, "width": 48, "tta": ["hflip"]}
    return write_recipe(tmp_path / "recipe.json", [member])


def _masks(path) -> np.ndarray:
    with gzip.open(path, "rt") as f:
        return np.stack([rle.decode(line.split(",")[1], H, W) for line in f.read().splitlines()[1:]])


def test_submission_on_cuda_agrees_with_cpu(tiny_data, tmp_path):
    """The pinned, non-blocking copy of the masks: every row as on CPU (fp32 on both; cuDNN's and the
    CPU's convolutions differ in rounding only)."""
    recipe = _recipe(tiny_data, tmp_path)
    cpu = make_submission(recipe, tiny_data, tmp_path / "cpu.csv.gz", device="cpu", num_workers=0, quiet=True)
    gpu = make_submission(
        recipe, tiny_data, tmp_path / "gpu.csv.gz", device="cuda", num_workers=2, batch_size=3, precision="fp32",
        quiet=True,
    )  # fmt: skip
    assert cpu["rows"] == gpu["rows"] == 16
    assert np.mean(_masks(tmp_path / "cpu.csv.gz") == _masks(tmp_path / "gpu.csv.gz")) >= 0.999


@two_gpus
def test_engine_on_the_second_gpu(tiny_data, tmp_path):
    """cuda:1 in one process: the copies are guarded on cuda:1's stream, and the masks are cuda:0's."""
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    model = build_model(cfg.model)
    images = sorted((tiny_data / "train").glob("*.jpg"))[:40]
    masks = {}
    for device in ("cuda:0", "cuda:1"):
        engine = Engine(
            [Member("m", [model], 32, 48, ["hflip"])], torch.device(device), "fp32", batch_size=4, num_workers=2
        )
        masks[device] = np.concatenate([np.stack(m) for _, m in engine.masks(images, [1], 128)])
        assert torch.cuda.current_device() == int(device[-1])
    assert np.array_equal(masks["cuda:0"], masks["cuda:1"])
