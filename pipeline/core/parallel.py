"""joblib process pools whose workers end with the process that started them.

joblib's loky workers outlive a parent that is killed (SIGTERM's default action, kill -9, the OOM
killer): they wait for work until their idle timeout, minutes later, each holding the memory it
last used (about 800 MB per ensemble worker on the full-size maps). Each worker here runs a
watchdog thread that ends it as soon as its parent is gone (it is re-parented), polled twice a
second: a killed stage leaves nothing running.
"""

from __future__ import annotations

import os
import threading
import time

from joblib import Parallel, parallel_config

POLL_SECONDS = 0.5


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(1)  # the parent is gone: nobody will read this worker's results


def _die_with_parent(parent: int) -> None:
    """Loky worker initializer: watch ``parent`` (its pid is passed in: a worker still starting up when
    its parent was killed is already re-parented, and must end at once)."""
    threading.Thread(target=_watch, args=(parent,), name="die-with-parent", daemon=True).start()


def parallel(n_jobs: int, **kwargs) -> Parallel:
    """``joblib.Parallel(n_jobs, **kwargs)`` on loky processes that end with this process."""
    # read when the Parallel is made
    with parallel_config(backend="loky", initializer=_die_with_parent, initargs=(os.getpid(),)):
        return Parallel(n_jobs=n_jobs, **kwargs)
