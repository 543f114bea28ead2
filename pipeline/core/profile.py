"""Where a stage's time goes: named steps timed on whichever thread runs them (``--profile``).

``PROFILE.step(name)`` times a stretch of work on its thread (wall time, and the thread's own CPU
time); ``report`` sums them per photo. Steps run side by side on several threads, so their times add
up to about the threads' busy time, not to the wall time; a step that waits for another runtime's
threads (OpenVINO's inference) shows wall time but little CPU of its own. Off unless a stage turns
it on: then each step costs two clock reads.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict


class StepProfile:
    def __init__(self):
        self.enabled = False
        self._lock = threading.Lock()
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def start(self) -> None:
        with self._lock:
            self.wall.clear(), self.cpu.clear(), self.calls.clear()
        self.enabled = True

    def stop(self) -> None:
        self.enabled = False

    @contextlib.contextmanager
    def _timed(self, name: str):
        w, c = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            dw, dc = time.perf_counter() - w, time.thread_time() - c
            with self._lock:
                self.wall[name] += dw
                self.cpu[name] += dc
                self.calls[name] += 1

    def step(self, name: str):
        return self._timed(name) if self.enabled else contextlib.nullcontext()

    def report(self, photos: int, seconds: float, cores: int) -> str:
        """A table: per step, its wall and CPU milliseconds per photo on its thread, and its calls; then the
        wall time per photo and what ``cores`` cores had to spend on it (more threads than cores share them,
        so their steps' wall times add up to more)."""
        photos = max(1, photos)
        rows = [f"{'step':<34} {'ms/photo':>9} {'cpu ms':>8} {'calls':>7}"]
        for name in sorted(self.wall, key=self.wall.get, reverse=True):
            rows.append(
                f"{name:<34} {1000 * self.wall[name] / photos:9.1f} {1000 * self.cpu[name] / photos:8.1f}"
                f" {self.calls[name]:7d}"
            )
        rows.append(
            f"{photos} photos in {seconds:.1f} s: {photos / seconds:.2f} photos/s, "
            f"{1000 * seconds / photos:.1f} ms per photo of wall time on {cores} core(s) "
            f"({1000 * seconds * cores / photos:.1f} core-ms per photo to spend)"
        )
        return "\n".join(rows)


PROFILE = StepProfile()
