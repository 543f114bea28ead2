"""Wall time and peak memory of a stretch of work on a device: ``torch.cuda.max_memory_allocated``
on CUDA, the peak RSS of this process on CPU (VmHWM, reset through ``/proc/self/clear_refs``).
Used by ``make smoke``, ``make bench`` and ``scripts/gpu_check.py``."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import platform
import time
from pathlib import Path

import torch

from .device import usable_cores

GB = 1024**3


def _proc_kb(field: str, path: str = "/proc/self/status") -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so that a stage's baseline RSS is what is alive:
    without it, memory freed by the stage before stays in this process's RSS and hides in the baseline."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: baselines may include freed memory


def machine(device: torch.device | None = None) -> dict:
    """What a figure was measured on: the processor, cores, torch threads and device (for records)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    if device is not None:
        info["device"] = str(device)
        if device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(device)
    return info


class Meter:
    """Per-stage wall time and peak memory on ``device`` (CUDA: allocated tensors; CPU: this process's RSS)."""

    def __init__(self, device: torch.device, show: bool = False):
        self.device, self.show = device, show
        self.stages: list[dict] = []
        self.cuda = device.type == "cuda"
        self.resettable = self.cuda or self._reset_rss()
        if self.cuda:
            self.capacity = torch.cuda.get_device_properties(device).total_memory
            self.capacity_what = f"{torch.cuda.get_device_name(device)}, {self.capacity / GB:.1f} GB"
        else:  # what this process may still grow into on a host shared with others
            self.capacity = self.current() + _proc_kb("MemAvailable", "/proc/meminfo") * 1024
            self.capacity_what = f"this process's RSS + MemAvailable, {self.capacity / GB:.1f} GB"

    def _reset_rss(self) -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    def current(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.cuda else _proc_kb("VmRSS") * 1024

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else _proc_kb("VmHWM") * 1024

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def stage(self, name: str, images: int = 0):
        gc.collect()
        self._sync()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _malloc_trim()
            self._reset_rss()
        baseline = self.current()
        start = time.perf_counter()
        yield
        self._sync()
        seconds = time.perf_counter() - start
        record = {"stage": name, "seconds": round(seconds, 2), "peak_gb": round(self.peak() / GB, 3)}
        record.update(baseline_gb=round(baseline / GB, 3), images=images)
        record["img_s"] = round(images / seconds, 3) if images else None
        self.stages.append(record)
        if self.show:
            print(row(record), flush=True)


def row(r: dict) -> str:
    """A stage as a line of the table ``make smoke`` prints."""
    img_s = f"{r['img_s']:9.3f}" if r["img_s"] is not None else " " * 9
    return f"  {r['stage']:<30} {r['seconds']:9.1f} {r['peak_gb']:9.2f} {r['images'] or '':>7} {img_s}"
