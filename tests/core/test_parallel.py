"""The process pools of pipeline/core/parallel.py (the ordered thread map: test_ordered_map.py)."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from joblib import delayed

from pipeline.core.parallel import parallel

_HELD: list[np.ndarray] = []


def _task(i: int) -> int:
    if i == 2:  # a worker's second task or later: its memory grows by 384 MiB (loky's mark: 286 MiB) and stays
        _HELD.append(np.ones(384 * 2**20 // 8))
        time.sleep(1.1)  # loky looks at a worker's memory at most once a second
    time.sleep(0.05)
    return os.getpid()


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the workers' state in /proc (Linux)")
def test_a_worker_whose_memory_grows_is_not_restarted_nor_warned_about():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pids = parallel(2, batch_size=1, pre_dispatch="all")(delayed(_task)(i) for i in range(12))
    assert [str(w.message) for w in caught if "worker stopped" in str(w.message)] == []
    assert len(set(pids)) == 2  # the same two workers throughout, none started again
    time.sleep(0.5)
    for pid in set(pids):  # still there, waiting for the next stage's work (loky keeps its workers a while)
        stat = Path(f"/proc/{pid}/stat")
        alive = stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        assert alive, f"worker {pid} ended (loky took its memory for a leak)"
