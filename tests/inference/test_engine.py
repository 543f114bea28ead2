"""The inference engine (pipeline/inference/engine.py): the blend's rounding, CPU memory kept."""

import numpy as np
import torch

from pipeline.inference.engine import blend


def test_blend_numpy_and_torch_agree_and_round_half_up():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, (3, 50, 70), dtype=np.uint8)
    for w in ([1, 0, 0], [3, 3, 4], [0, 7, 3], [1, 1, 1]):
        a = blend(q, w)
        b = blend(torch.from_numpy(q), w).numpy()
        assert np.array_equal(a, b)
        exact = (q.astype(np.float64) * np.array(w)[:, None, None]).sum(0) / sum(w)
        assert np.array_equal(a, np.floor(exact + 0.5).astype(np.uint8))


def test_cpu_processes_keep_freed_memory(monkeypatch):
    # glibc returns big freed blocks to the OS by default, and CPU steps then page-fault their activations
    # anew each time; use_device("cpu") keeps them (pipeline.engine.keep_freed_memory), unless turned off.
    import platform

    from pipeline.core.device import keep_freed_memory, use_device

    keep_freed_memory.cache_clear()
    monkeypatch.setenv("PIPELINE_KEEP_FREED_MEMORY", "0")
    assert keep_freed_memory() is False
    keep_freed_memory.cache_clear()
    monkeypatch.delenv("PIPELINE_KEEP_FREED_MEMORY")
    use_device(torch.device("cpu"))
    assert keep_freed_memory.cache_info().currsize == 1
    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
