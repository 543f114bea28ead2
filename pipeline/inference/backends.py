"""Inference runtimes besides PyTorch eager, for CPU users: ONNX Runtime and OpenVINO.

``runtime(model, backend)`` wraps a ``SegModel`` (normalisation, padding and the U-Net) so that the
engine calls it exactly as it calls the PyTorch model: a (B, 3, H, W) batch of 0..255 RGB in, logits
out. The model is exported once per input size it meets (the TTA views of one member have at most
two), with a dynamic batch dimension, in memory; nothing is written to disk. Both runtimes are
optional packages (``pip install onnxruntime`` or ``openvino``): asking for one that is not installed
is a one-line error saying so. Measured against PyTorch on 2 CPU cores in docs/benchmarks.md.

Both runtimes write usage data of their own when loaded (ONNX Runtime a device id and a database under
``~/.cache/Microsoft``, OpenVINO a client id and counters under ``~/intel`` and a file in the temp
folder), and neither has a switch for it here: they are loaded and compiled with ``HOME`` and
``TMPDIR`` pointed at a scratch folder that is removed at once, so nothing of theirs stays behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile

import numpy as np
import torch

from ..core.config import ConfigError

BACKENDS = ("torch", "onnxruntime", "openvino")
OPSET = 17


def check_backend(name: str) -> None:
    if name not in BACKENDS:
        raise ConfigError(f"--backend {name!r}: one of {', '.join(BACKENDS)}")
    if name == "torch":
        return
    import importlib.util

    if importlib.util.find_spec(name) is None:
        raise ConfigError(f"--backend {name}: the package {name!r} is not installed here; `pip install {name}`")


def _onnx_bytes(model: torch.nn.Module, shape: tuple[int, int, int]) -> bytes:
    """The model as ONNX for inputs (batch, *shape): the padding to the encoder's stride is fixed per size."""
    buf = io.BytesIO()
    example = torch.zeros(1, *shape)
    torch.onnx.export(
        model,
        (example,),
        buf,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    return buf.getvalue()


class Runtime(torch.nn.Module):
    """A SegModel run by ONNX Runtime or OpenVINO: the engine's model interface (uint8 or float in, logits out)."""

    def __init__(self, model: torch.nn.Module, backend: str, threads: int | None = None):
        super().__init__()
        check_backend(backend)
        self.model = model.float().eval().to(memory_format=torch.contiguous_format)
        self.backend = backend
        self.threads = threads or torch.get_num_threads()
        self._runs: dict[tuple[int, ...], object] = {}

    def to(self, *args, **kwargs):  # the runtime holds its own copy of the weights: moves are no-ops
        return self

    def _compile(self, shape: tuple[int, int, int]):
        with torch.no_grad():
            onnx = _onnx_bytes(self.model, shape)
        with _scratch_home():
            return self._session(onnx)

    def _session(self, onnx: bytes):
        if self.backend == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
            return lambda x: session.run(None, {"image": x})[0]
        import openvino as ov

        core = ov.Core()
        core.set_property("CPU", {"INFERENCE_NUM_THREADS": self.threads})
        compiled = core.compile_model(core.read_model(onnx), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return lambda x: compiled(x)[0]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[1:])
        run = self._runs.get(shape)
        if run is None:
            run = self._runs[shape] = self._compile(shape)
        batch = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(np.asarray(run(batch)))


@contextlib.contextmanager
def _scratch_home():
    """HOME and TMPDIR pointed at a fresh folder for as long as a runtime loads and compiles; removed after."""
    scratch = tempfile.mkdtemp(prefix="pipeline-runtime-")
    saved = {k: os.environ.get(k) for k in ("HOME", "TMPDIR")}
    saved_tempdir = tempfile.tempdir
    os.environ["HOME"] = os.environ["TMPDIR"] = scratch
    tempfile.tempdir = scratch
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tempfile.tempdir = saved_tempdir
        shutil.rmtree(scratch, ignore_errors=True)


def runtime(model: torch.nn.Module, backend: str = "torch") -> torch.nn.Module:
    """``model`` itself for PyTorch, else the same model run by ``backend`` (on the CPU)."""
    return model if backend == "torch" else Runtime(model, backend)
