"""The networks and their checkpoints (pipeline/models/unet.py): any input size, weights files loaded
strictly, settings an architecture ignores refused, checkpoints that hold code refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.core.config import ConfigError, ModelConfig
from pipeline.core.errors import CheckpointError
from pipeline.models.unet import WeightsError, build_model, read_checkpoint
from pipeline.stages.train import Trainer
from tests.conftest import WEIGHTS, tiny_config
from tests.conftest import one_error_line as _one_error_line
from tests.conftest import run_cli_stderr as _cli

SHARED_MNV2 = WEIGHTS / "mobilenet_v2_imagenet_features_tvkeys.pth"


def _tiny(weights="none", encoder="resnet18"):
    return ModelConfig(encoder=encoder, encoder_weights=str(weights), decoder_channels=[16, 8, 8, 8, 8])


def test_forward_pads_and_crops_any_size():
    model = build_model(_tiny()).eval()
    x = torch.randint(0, 256, (2, 3, 50, 70), dtype=torch.uint8)
    with torch.no_grad():
        assert model(x).shape == (2, 1, 50, 70)


def test_local_weights_file_is_loaded(tmp_path):
    source = build_model(_tiny())
    path = tmp_path / "enc.pth"
    torch.save({"state_dict": source.net.encoder.state_dict()}, path)  # a wrapped state dict is accepted
    loaded = build_model(_tiny(path))
    for k, v in source.net.encoder.state_dict().items():
        assert torch.equal(v, loaded.net.encoder.state_dict()[k]), k
    fresh = build_model(_tiny())
    assert not torch.equal(fresh.net.encoder.conv1.weight, source.net.encoder.conv1.weight)


def test_safetensors_weights_file_is_loaded(tmp_path):
    from safetensors.torch import save_file

    source = build_model(_tiny())
    path = tmp_path / "model.safetensors"
    save_file({f"encoder.{k}": v.contiguous() for k, v in source.net.encoder.state_dict().items()}, path)
    loaded = build_model(_tiny(path))
    assert torch.equal(loaded.net.encoder.conv1.weight, source.net.encoder.conv1.weight)


def test_mismatched_weights_file_fails_clearly(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="wrong.pth: does not match the encoder"):
        build_model(_tiny(path))
    with pytest.raises(WeightsError, match="not found"):
        build_model(_tiny(tmp_path / "absent.pth"))


@pytest.mark.real_data
@pytest.mark.skipif(not SHARED_MNV2.is_file(), reason=f"ImageNet MobileNetV2 weights not found at {SHARED_MNV2}")
def test_shared_imagenet_mobilenet_v2_loads_strictly():
    model = build_model(_tiny(SHARED_MNV2, encoder="mobilenet_v2"))
    state = torch.load(SHARED_MNV2, map_location="cpu", weights_only=True)
    got = model.net.encoder.state_dict()
    assert all(torch.equal(state[k], got[k]) for k in state)


def test_refine_block_starts_as_the_identity_and_learns():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(encoder="resnet18", encoder_weights="none", decoder_channels=[16, 8, 8, 8, 8]))
    refined = build_model(
        ModelConfig(encoder="resnet18", encoder_weights="none", decoder_channels=[16, 8, 8, 8, 8], refine=8)
    )
    missing = refined.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("refine.") for k in missing)
    plain.eval(), refined.eval()
    x = torch.randint(0, 256, (2, 3, 40, 72), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(refined(x), plain(x))  # zero-initialised last conv: a new block changes nothing
    refined.train()
    refined(x).mean().backward()
    assert refined.refine.body[-1].weight.grad.abs().sum() > 0  # and it receives gradient


def test_config_value_the_arch_ignores_is_an_error(tiny_data, tmp_path):
    from pipeline.core.config import ModelConfig

    with pytest.raises(ConfigError, match=r"model.decoder_channels=\[16, 8, 8, 8, 8\]: architecture FPN has no"):
        build_model(
            ModelConfig(arch="FPN", encoder="resnet18", encoder_weights="none", decoder_channels=[16, 8, 8, 8, 8])
        )
    cfg = tiny_config(tiny_data, tmp_path / "runs", **{"model.arch": "FPN"})  # tiny_config sets decoder_channels
    with pytest.raises(ConfigError, match="FPN"):
        Trainer(cfg, quiet=True)
    assert not cfg.run_dir.exists()  # refused before anything was written
    cfg = tiny_config(tiny_data, tmp_path / "runs", **{"model.arch": "FPN", "model.decoder_channels": "null"})
    t = Trainer(cfg, quiet=True)
    assert type(t.model.net).__name__ == "FPN" and t.cfg.model.decoder_channels is None
    unet = Trainer(tiny_config(tiny_data, tmp_path / "u", **{"model.decoder_channels": "null"}), quiet=True)
    assert unet.cfg.model.decoder_channels == [256, 128, 64, 32, 16]  # the saved config says what was built
    saved = yaml.safe_load((unet.run_dir / "config.yaml").read_text())
    assert saved["model"]["decoder_channels"] == [256, 128, 64, 32, 16]


def test_imagenet_weights_offline_fail_at_once(monkeypatch):
    """No connection to the hub: huggingface_hub is asked offline (its cache only), not for a minute of retries."""
    import huggingface_hub.constants as hf
    import segmentation_models_pytorch as smp

    from pipeline.core.config import ModelConfig
    from pipeline.models import unet

    def unreachable(*a, **k):
        raise OSError("no network")

    seen = {}

    def create_model(*a, **k):
        seen["offline"] = hf.HF_HUB_OFFLINE
        raise OSError("not in the cache")

    monkeypatch.setattr(unet.socket, "create_connection", unreachable)
    monkeypatch.setattr(smp, "create_model", create_model)
    before = hf.HF_HUB_OFFLINE
    with pytest.raises(unet.WeightsError, match="Offline"):
        unet.build_model(ModelConfig(arch="Unet", encoder="mobilenet_v2", encoder_weights="imagenet"))
    assert seen["offline"] is True and hf.HF_HUB_OFFLINE == before  # offline for that call only


def _side_effect(path):  # what a crafted checkpoint would make torch.load call
    Path(path).write_text("foreign code ran")


class _Crafted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_side_effect, (self.marker,))


def test_a_crafted_checkpoint_does_not_run_code(tiny_data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    cfg = tiny_config(tiny_data, tmp_path / "runs")
    evil = tmp_path / "best.pt"
    torch.save({"config": cfg.to_dict(), "model": {}, "extra": _Crafted(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused: it holds Python objects"):
        read_checkpoint(evil)
    assert not marker.exists()
    cfg.run_dir.mkdir(parents=True)
    shutil.copy(evil, cfg.run_dir / "last.pt")  # a shared run folder: resume reads it
    config = tmp_path / "c.yaml"
    config.write_text(cfg.to_yaml())
    code, err = _cli(capsys, "train", "--config", config)
    assert code == 2 and "refused" in _one_error_line(err) and not marker.exists()
