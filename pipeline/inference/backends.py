"""Inference runtimes besides PyTorch eager, for CPU users: ONNX Runtime and OpenVINO.

``runtime(model, backend)`` wraps a ``SegModel`` (normalisation, padding and the U-Net) so that the
engine calls it exactly as it calls the PyTorch model: a (B, 3, H, W) batch of 0..255 RGB in, logits
out. The model is exported once per input size it meets (the TTA views of one member have at most
two), with a dynamic batch dimension, in memory; nothing is written to disk. Both runtimes are
optional packages (``pip install onnxruntime`` or ``openvino``): asking for one that is not installed
is a one-line error saying so. Measured against PyTorch on 2 CPU cores in docs/record/cpu-speed.md.

OpenVINO runs in fp32 or, where the CPU has bfloat16 instructions (AVX-512 BF16 or AMX), in bf16: about
twice as fast, with masks that agree with fp32's to well within the bound docs/record/cpu-speed.md states.
A model folder quantized by ``make quantize`` also holds the network in INT8 (an OpenVINO model per input
size, calibrated on training photos, layers put back in float until its masks are within a bound of
fp32's): OpenVINO runs it in ``int8``, the layers it keeps in float in bf16 (or fp32 without bfloat16
instructions). ``resolve_runtime`` turns ``--backend``/``--precision`` into what runs: on a CPU the default
is OpenVINO in the fastest precision this CPU and this model have, ``--precision fp32`` the PyTorch fp32
path. One ``Runtime`` may be
called from several threads at once (the engine's photo workers): each thread gets its own inference
request, and OpenVINO runs them side by side as streams of one thread each.

Both runtimes write usage data of their own when loaded (ONNX Runtime a device id and a database under
``~/.cache/Microsoft``, OpenVINO a client id and counters under ``~/intel`` and a file in the temp
folder), and neither has a switch for it here: they are loaded and compiled with ``HOME`` and
``TMPDIR`` pointed at a scratch folder that is removed at once (``core.cpu_runtime.scratch_home``), so
nothing of theirs stays behind.
"""

from __future__ import annotations

import functools
import io
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..core.config import ConfigError
from ..core.cpu_runtime import openvino_callable, scratch_home
from ..core.device import runtime_threads, usable_cores

BACKENDS = ("torch", "onnxruntime", "openvino")
OPSET = 17
# What OpenVINO may run a model in: fp32 and bf16 (its INFERENCE_PRECISION_HINT), or int8 (a quantized
# model from the model folder; what it keeps in float runs in bf16 where the CPU has it).
OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")


def check_backend(name: str) -> None:
    if name not in ("auto", *BACKENDS):
        raise ConfigError(f"--backend {name!r}: one of auto, {', '.join(BACKENDS)}")
    if name in ("auto", "torch"):
        return
    import importlib.util

    if importlib.util.find_spec(name) is None:
        raise ConfigError(f"--backend {name}: the package {name!r} is not installed here; `pip install {name}`")


def _onnx_bytes(model: torch.nn.Module, shape: tuple[int, int, int]) -> bytes:
    """The model as ONNX for inputs (batch, *shape): the padding to the encoder's stride is fixed per size."""
    buf = io.BytesIO()
    example = torch.zeros(1, *shape)
    with warnings.catch_warnings():
        # The trace fixes the padding to this size (``if ph or pw``), which is what is meant: no word to a user.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
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


@functools.cache
def cpu_capabilities() -> frozenset[str]:
    """What OpenVINO says this CPU runs natively (``BF16``, ``INT8``, ``FP32``...); empty without OpenVINO."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return frozenset()
    with scratch_home():
        import openvino as ov

        return frozenset(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def openvino_hint(precision: str) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT for ``precision``: ``f32`` or ``bf16`` (int8: for the layers kept in
    float, bf16 where the CPU has bfloat16 instructions)."""
    if precision == "int8":
        return "bf16" if "BF16" in cpu_capabilities() else "f32"
    return {"fp32": "f32", "bf16": "bf16"}[precision]


@dataclass(frozen=True)
class RuntimeChoice:
    """What runs the network: ``backend`` (torch, onnxruntime, openvino) and ``precision`` (None: each
    member's own, PyTorch only), and the words that say so at start (``describe``)."""

    backend: str
    precision: str | None
    why: str = ""

    def describe(self, device: torch.device, jobs: int) -> str:
        """The start line: the runtime, its precision and, on the CPU, its threads for ``jobs`` photos in flight."""
        if self.backend == "torch":
            what = f"PyTorch {self.precision or 'in each model’s own precision'} on {device}"
            if device.type == "cpu":
                what += f" ({max(jobs, torch.get_num_threads())} threads)"
        else:
            name = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}[self.backend]
            precision = self.precision
            if precision == "int8":
                precision = f"int8 (the rest in {'bf16' if openvino_hint('int8') == 'bf16' else 'fp32'})"
            cores, threads = usable_cores(), runtime_threads(jobs)
            where = f"{threads} thread{'s' if threads > 1 else ''}"
            if cores != threads:
                where += f" on {cores} core{'s' if cores > 1 else ''}"
            what = f"{name} {precision} on the CPU ({where})"
        return f"inference: {what}" + (f"; {self.why}" if self.why else "")


def resolve_runtime(backend: str, precision: str | None, device: torch.device, int8: bool = False) -> RuntimeChoice:
    """``--backend``/``--precision`` as run on ``device``; ``int8``: every member has an INT8 network for each
    of its input sizes (a model folder quantized by ``make quantize``).

    - ``auto`` (the default): on a GPU, PyTorch; on a CPU, OpenVINO (when installed) in int8 where every
      member has INT8 networks and the CPU runs INT8, else in bf16 where the CPU has bfloat16
      instructions, else in fp32; ``--precision fp32`` (or fp16) keeps PyTorch, exact.
    - ``openvino``: as auto on a CPU, or the precision asked for (bf16 on a CPU without it is an error);
      ``onnxruntime``: fp32; both on the CPU only.
    - ``--precision int8``: OpenVINO with the members' INT8 networks (an error where one has none).
    - ``torch``: each member's recorded precision, or ``precision`` for all.
    """
    check_backend(backend)
    capabilities = cpu_capabilities()
    has_bf16 = "BF16" in capabilities
    if precision == "int8":
        if device.type != "cpu" or backend not in ("auto", "openvino") or "openvino" not in _installed():
            raise ConfigError("--precision int8: OpenVINO on the CPU only (--backend openvino, --device cpu)")
        if not int8:
            raise ConfigError(
                "--precision int8: this model has no INT8 network (a model folder quantized by `make quantize`)"
            )
        return RuntimeChoice("openvino", "int8")
    if backend == "auto":
        if device.type != "cpu" or precision not in (None, "bf16") or "openvino" not in _installed():
            return RuntimeChoice("torch", precision)
        if precision == "bf16" and not has_bf16:
            return RuntimeChoice("torch", precision, "this CPU has no bfloat16 instructions: PyTorch's bf16")
        backend = "openvino"
    if backend == "torch":
        return RuntimeChoice("torch", precision)
    if device.type != "cpu":
        raise ConfigError(f"--backend {backend}: runs on the CPU (--device cpu), not on {device}")
    if backend == "onnxruntime":
        if precision not in (None, "fp32"):
            raise ConfigError(f"--backend onnxruntime: runs in fp32, not {precision}; use --precision fp32")
        return RuntimeChoice(backend, "fp32")
    if precision is None:
        if int8 and "INT8" in capabilities:
            why = "the model's INT8 networks (--precision bf16: without them; fp32: PyTorch, exact)"
            return RuntimeChoice(backend, "int8", why)
        if has_bf16:
            return RuntimeChoice(backend, "bf16", "the CPU's bfloat16 instructions (--precision fp32: PyTorch, exact)")
        return RuntimeChoice(backend, "fp32", "this CPU has no bfloat16 instructions")
    if precision not in OPENVINO_PRECISIONS:
        raise ConfigError(f"--backend openvino: runs in {', '.join(OPENVINO_PRECISIONS)}, not {precision}")
    if precision == "bf16" and not has_bf16:
        raise ConfigError("--precision bf16: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX); use fp32")
    return RuntimeChoice(backend, precision)


def _installed() -> set[str]:
    import importlib.util

    return {n for n in BACKENDS[1:] if importlib.util.find_spec(n) is not None}


class Runtime(torch.nn.Module):
    """A SegModel run by ONNX Runtime or OpenVINO: the engine's model interface (uint8 or float in, logits out).

    ``streams``: how many threads call it at once (OpenVINO runs as many requests side by side, each on
    ``threads // streams`` threads); ``precision``: fp32, or bf16 or int8 (OpenVINO); ``networks``: in int8,
    the quantized OpenVINO model (xml, weights) per input size (h, w), run instead of the model's export."""

    def __init__(
        self,
        model: torch.nn.Module,
        backend: str,
        threads: int | None = None,
        precision: str = "fp32",
        streams: int = 1,
        networks: dict[tuple[int, int], tuple[bytes, bytes]] | None = None,
    ):
        super().__init__()
        check_backend(backend)
        if precision == "int8" and (backend != "openvino" or not networks):
            raise ValueError("int8: OpenVINO, with the model folder's INT8 networks (`make quantize`)")
        self.networks = networks or {}
        self.model = model.float().eval().to(memory_format=torch.contiguous_format)
        self.backend = backend
        self.threads = threads or torch.get_num_threads()
        self.precision, self.streams = precision, max(1, streams)
        self._runs: dict[tuple[int, ...], object] = {}
        self._lock = threading.Lock()

    def to(self, *args, **kwargs):  # the runtime holds its own copy of the weights: moves are no-ops
        return self

    def _compile(self, shape: tuple[int, int, int]):
        if self.precision == "int8":
            network = self.networks.get(tuple(shape[-2:]))
            if network is None:
                raise ValueError(f"int8: no INT8 network for input size {shape[-2]}x{shape[-1]} (`make quantize`)")
            return openvino_callable(network, openvino_hint("int8"), self.threads, self.streams)
        with torch.no_grad():
            onnx = _onnx_bytes(self.model, shape)
        if self.backend == "openvino":
            return openvino_callable(onnx, openvino_hint(self.precision), self.threads, self.streams)
        with scratch_home():
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

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape[1:])
        run = self._runs.get(shape)
        if run is None:
            with self._lock:  # two photo workers meeting a new size compile it once
                run = self._runs.get(shape)
                if run is None:
                    run = self._runs[shape] = self._compile(shape)
        batch = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(np.asarray(run(batch)))


def runtime(
    model: torch.nn.Module,
    backend: str = "torch",
    precision: str = "fp32",
    streams: int = 1,
    threads: int | None = None,
    networks: dict[tuple[int, int], tuple[bytes, bytes]] | None = None,
) -> torch.nn.Module:
    """``model`` itself for PyTorch, else the same model run by ``backend`` (on the CPU); ``networks``: int8's."""
    if backend == "torch":
        return model
    return Runtime(model, backend, threads, precision=precision, streams=streams, networks=networks)
