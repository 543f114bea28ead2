"""How many photos the CPU takes at once, and the cores it counts."""

from __future__ import annotations

import torch

from pipeline.core import device

CPU = torch.device("cpu")


def test_photos_in_flight_on_a_cpu_default_to_two_per_usable_core(monkeypatch):
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    assert device.usable_cores() == 3
    assert device.cpu_jobs(None, CPU) == 6
    assert device.cpu_jobs(1, CPU) == 1  # asked for: kept
    assert device.cpu_jobs(None, torch.device("cuda")) == 1  # a GPU takes batches
    # never more in flight than there are photos: a lone photo runs its network on all the cores
    assert [device.cpu_jobs(None, CPU, photos=n) for n in (1, 4, 100)] == [1, 4, 6]
    assert device.cpu_jobs(3, CPU, photos=1) == 3  # asked for: kept


def test_a_cpu_runtime_runs_on_a_thread_per_photo_or_with_one_photo_on_torchs_threads():
    assert device.runtime_threads(4) == 4
    assert device.runtime_threads(1) == torch.get_num_threads()
