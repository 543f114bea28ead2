"""OpenVINO on the CPU (pipeline/core/cpu_runtime.py): a process that compiled a network still handles signals."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("openvino")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.multiprocess
def test_compiling_keeps_the_thread_s_signal_stack_and_signals_still_arrive():
    """Loading OpenVINO's CPU plugin left the thread's alternate signal stack in freed memory: the next
    handled signal (a DataLoader worker's exit, Ctrl-C) killed the process with a segmentation fault."""
    script = textwrap.dedent("""
        import ctypes, io, os, signal
        import numpy as np, torch
        from pipeline.core.cpu_runtime import _SignalStack, openvino_callable

        def stack():
            s = _SignalStack()
            assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(s)) == 0
            return s.ss_sp, s.ss_flags, s.ss_size

        before = stack()
        onnx = io.BytesIO()
        torch.onnx.export(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 16, 16), onnx, dynamo=False)
        run = openvino_callable(onnx.getvalue(), "f32", 1)
        assert run(np.ones((1, 3, 16, 16), np.float32)).shape == (1, 4, 14, 14)
        assert stack() == before, (before, stack())
        got = []
        signal.signal(signal.SIGUSR1, lambda *a: got.append(a[0]))
        os.kill(os.getpid(), signal.SIGUSR1)
        print("handled", got == [signal.SIGUSR1])
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "handled True" in proc.stdout, (proc.returncode, proc.stderr[-2000:])
