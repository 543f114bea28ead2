"""joblib process pools whose workers end with the process that started them, and an ordered thread map.

joblib's loky workers outlive a parent that is killed (SIGTERM's default action, kill -9, the OOM
killer): they wait for work until their idle timeout, minutes later, each holding the memory it
last used (about 800 MB per ensemble worker on the full-size maps). Each worker here runs a
watchdog thread that ends it as soon as its parent is gone (it is re-parented), polled twice a
second: a killed stage leaves nothing running.

loky also restarts a worker whose memory grew by 300 MB since its first task, taking that for a leak,
and warns "A worker stopped while some jobs were given to the executor ... memory leak". Ours grow by
design (full-size maps, a runtime compiled once, glibc's heap, which keeps freed blocks): in `make demo`'s
report a worker went from 1.05 to 1.33 GB and, now and then, past the mark: a new worker, its imports
paid again, and the warning on the user's screen. The check is off in our workers; the watchdog ends them.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from joblib import Parallel, parallel_config

T = TypeVar("T")
R = TypeVar("R")

POLL_SECONDS = 0.5


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(1)  # the parent is gone: nobody will read this worker's results


def _die_with_parent(parent: int) -> None:
    """Loky worker initializer: watch ``parent`` (its pid is passed in: a worker still starting up when
    its parent was killed is already re-parented, and must end at once); no restart for a memory "leak"."""
    from joblib.externals.loky import process_executor

    # read by the worker's loop after each task (loky has no public switch for it)
    process_executor._USE_PSUTIL = False
    threading.Thread(target=_watch, args=(parent,), name="die-with-parent", daemon=True).start()


def parallel(n_jobs: int, **kwargs) -> Parallel:
    """``joblib.Parallel(n_jobs, **kwargs)`` on loky processes that end with this process."""
    # read when the Parallel is made
    with parallel_config(backend="loky", initializer=_die_with_parent, initargs=(os.getpid(),)):
        return Parallel(n_jobs=n_jobs, **kwargs)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, ahead: int = 2) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, results in input order, at most ``workers + ahead`` in flight.

    For work that releases the GIL (OpenCV, NumPy, torch and OpenVINO kernels): each item's whole chain runs
    on one thread, so the cores stay busy without one worker waiting on another's step. An item's
    exception is raised when its turn comes, after every result before it; what is still in flight is
    cancelled or waited for, never left running. ``workers`` 1: a plain loop on this thread.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="photo") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= workers + ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
