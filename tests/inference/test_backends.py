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
