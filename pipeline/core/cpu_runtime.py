"""OpenVINO on the CPU: an ONNX graph compiled once and called from any thread, leaving nothing on disk.

OpenVINO writes usage data of its own when loaded (a client id and counters under ``~/intel``, a file
in the temp folder) and has no switch for it here: it is loaded and compiled with ``HOME`` and
``TMPDIR`` pointed at a scratch folder that is removed at once (``scratch_home``). Compile before
starting threads: the environment is the process's, not the thread's. Loading its CPU plugin leaves the
calling thread's alternate signal stack pointing at memory it has freed; ``scratch_home`` puts the
thread's own back (``kept_signal_stack``).

Used by the network's runtime (pipeline/inference/backends.py) and by the outline refiner's
(pipeline/masks/outline_refiner.py). Imports nothing of the pipeline.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable

import numpy as np

_SCRATCH = threading.RLock()  # one scratch at a time: the environment is the process's


@contextlib.contextmanager
def scratch_home():
    """HOME and TMPDIR pointed at a fresh folder for as long as a runtime loads and compiles; removed after.

    Held by one thread at a time (the others wait): two threads swapping the process's environment would
    leave it pointing at a removed folder."""
    with _SCRATCH, kept_signal_stack():
        yield from _scratch_home()


class _SignalStack(ctypes.Structure):  # POSIX stack_t
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def kept_signal_stack():
    """The calling thread's alternate signal stack as it was before, whatever runs inside.

    OpenVINO's CPU plugin, while it loads, sets a signal stack of its own, frees the one it replaced and
    then reinstates it: the thread is left with a stack in freed memory, and the next signal handled on
    it (a worker process's exit, Ctrl-C) crashes the process with a segmentation fault, or writes into
    whatever was mapped there since. Python has no call for this: libc's sigaltstack through ctypes."""
    if not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    saved = _SignalStack()
    if libc.sigaltstack(None, ctypes.byref(saved)) != 0:
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(saved), None)


def _scratch_home():
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


def openvino_callable(
    model: bytes | tuple[bytes, bytes], precision: str, threads: int, streams: int = 1
) -> Callable[..., np.ndarray]:
    """``run(*inputs) -> first output`` of ``model`` compiled by OpenVINO for the CPU: an ONNX graph (bytes),
    or an OpenVINO model (xml, weights) as bytes.

    ``precision``: OpenVINO's INFERENCE_PRECISION_HINT (``f32`` or ``bf16``). Each calling thread has its own
    inference request (a compiled model runs ``streams`` requests side by side, ``threads`` threads in all);
    the output is copied out of the request's buffer before that thread's next call reuses it.
    """
    with scratch_home():
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": streams}
        # Not pinned: two compiled models (the network, the refiner) would pin their streams to the same
        # cores whatever the other threads do.
        config["ENABLE_CPU_PINNING"] = False
        read = core.read_model(*model) if isinstance(model, tuple) else core.read_model(model)
        compiled = core.compile_model(read, "CPU", config)
    local = threading.local()

    def run(*inputs: np.ndarray) -> np.ndarray:
        request = getattr(local, "request", None)
        if request is None:
            request = local.request = compiled.create_infer_request()
        request.infer(dict(enumerate(inputs)))
        return request.get_output_tensor(0).data.copy()

    return run
