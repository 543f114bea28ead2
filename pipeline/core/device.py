"""Devices and precisions: which device a stage runs on, what an AMP setting gives there, how many
photos the CPU takes at once. Used by training and by inference alike; knows nothing of models.
"""

from __future__ import annotations

import ctypes
import functools
import os
from contextlib import nullcontext

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# Photos in flight per core on the CPU runtimes (OpenVINO, ONNX Runtime), one thread each. A photo's thread
# leaves its core idle while it waits for the GIL between its OpenCV/NumPy steps and its network calls; with
# two per core both of 2 cores stayed busy (480 photos, the shipped model: 4 in flight took 0.94 of the time
# of 3, 3 took 0.90 of 2, 6 no less than 4; the same bytes each time; docs/benchmarks.md).
PHOTOS_PER_CORE = 2


def usable_cores() -> int:
    """The cores this process may use (its affinity, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_jobs(jobs: int | None, device: torch.device, photos: int | None = None) -> int:
    """Photos in flight at once on the CPU, one thread each: ``jobs``, or ``PHOTOS_PER_CORE`` per core this
    process may use but never more than the ``photos`` there are, when known (one photo then runs its
    network on all the cores, with one stream's memory); 1 on a GPU, which takes batches."""
    if device.type != "cpu":
        return 1
    if jobs is None:
        jobs = PHOTOS_PER_CORE * usable_cores()
        if photos is not None:
            jobs = min(jobs, photos)
    return max(1, int(jobs))


def runtime_threads(jobs: int) -> int:
    """Threads a CPU runtime (OpenVINO, ONNX Runtime) runs a network on: one per photo in flight, or with one
    photo at a time (``jobs`` 1: ``make serve``, batches) PyTorch's threads, all the cores by default."""
    return jobs if jobs > 1 else torch.get_num_threads()


def use_device(device: torch.device) -> None:
    """Make a CUDA device the current one, so that streams, events, pinned memory and the DataLoader's
    pin thread all belong to it (``cuda:1`` in one process must not work on, or open a context on, GPU 0).
    On CPU, keep freed memory in the process (``keep_freed_memory``)."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    if device.type == "cpu":
        keep_freed_memory()


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed blocks for reuse instead of giving them back to the OS.

    By default glibc serves every block above its mmap threshold (at most 32 MB; a 320x480 batch's
    activations are larger) with a fresh mmap and unmaps it on free, so on CPU each step page-faults
    all its activations anew: 17 % of a training run's CPU time was in the kernel. Measured on 2 cores,
    a MobileNetV2 U-Net step at 320x480 (channels_last) went from 4.09 to 3.00 s (docs/record/accuracy-levers.md).
    The process then holds its peak memory until it exits, which a training or prediction run does anyway.
    ``PIPELINE_KEEP_FREED_MEMORY=0`` turns it off. True if set (glibc only; a no-op elsewhere)."""
    if os.environ.get("PIPELINE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(setting: str, device: torch.device) -> str:
    """The precision an AMP setting gives on ``device``: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` is bf16 on a CUDA GPU that has it natively (fp16 on older ones), fp32 elsewhere;
    ``bf16``/``fp16`` are honoured on every device (torch autocasts on CPU too); ``off`` (or ``fp32``)
    is fp32. This is what the out-of-fold maps, the recipe and the submission's key record.
    """
    if setting in ("off", "fp32"):
        return "fp32"
    if setting in _DTYPES:
        return setting
    if setting == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    raise ValueError(f"unknown precision setting {setting!r}; use auto, bf16, fp16 or off")


def precision_label(precisions: list[str]) -> str:
    """One name for the precisions of several members: ``bf16``, or ``bf16,fp32`` in member order."""
    return precisions[0] if len(set(precisions)) == 1 else ",".join(precisions)


def resolve_channels_last(setting: bool | str, device: torch.device) -> bool:
    """``auto``: channels_last on CUDA only (on CPU it is not measured to pay off); true/false anywhere."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def autocast(device: torch.device, precision: str):
    """Autocast to ``precision`` (``resolve_precision``'s name) on the device's type; fp32: nothing."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])
