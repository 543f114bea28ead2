"""The CPU runtimes (pipeline/inference/backends.py): ONNX Runtime and OpenVINO write nothing outside."""

from __future__ import annotations

import tempfile

import torch


def test_the_cpu_runtimes_write_nothing_to_home_or_the_temp_folder(tmp_path, monkeypatch):
    from pipeline.inference.backends import runtime

    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    net = torch.nn.Conv2d(3, 1, 3, padding=1)
    for backend in ("onnxruntime", "openvino"):
        out = runtime(net, backend)(torch.zeros(1, 3, 32, 32))
        assert out.shape == (1, 1, 32, 32)
    assert list(home.rglob("*")) == [] and list(tmp.rglob("*")) == []


def test_the_network_goes_to_onnx_without_tracer_warnings():
    """A CPU runtime exports the network once per input size, its padding fixed for that size: torch's
    TracerWarning about it (printed by every `make submission` and `make predict`) says nothing to a user."""
    import warnings

    from pipeline.core.config import load_config
    from pipeline.inference.backends import _onnx_bytes
    from pipeline.models.unet import build_model

    cfg = load_config(None, ["model.encoder=tu-mobilenetv3_small_050", "model.encoder_weights=none"])
    model = build_model(cfg.model).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _onnx_bytes(model, (3, 40, 60))  # not a multiple of the encoder's stride: padded
    assert [str(w.message)[:80] for w in caught if issubclass(w.category, torch.jit.TracerWarning)] == []
