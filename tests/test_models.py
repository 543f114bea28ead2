import pytest
import torch

from pipeline.core.config import ModelConfig
from pipeline.models.unet import WeightsError, build_model
from tests.conftest import WEIGHTS

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
