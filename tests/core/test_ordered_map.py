"""core.parallel.ordered_map: results in input order, errors at their turn, bounded work in flight."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.core.parallel import ordered_map


def test_results_come_in_input_order_whatever_finishes_first():
    def slow_first(i):
        time.sleep(0.02 if i % 3 == 0 else 0)
        return i * i

    assert list(ordered_map(slow_first, range(20), workers=3)) == [i * i for i in range(20)]


def test_an_error_is_raised_at_its_turn_after_every_result_before_it():
    def fail_at_5(i):
        if i == 5:
            raise ValueError("photo 5")
        return i

    got = []
    with pytest.raises(ValueError, match="photo 5"):
        for r in ordered_map(fail_at_5, range(10), workers=2):
            got.append(r)
    assert got == [0, 1, 2, 3, 4]


def test_work_in_flight_is_bounded():
    running, most, lock = [0], [0], threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.005)
        with lock:
            running[0] -= 1
        return i

    started = []
    items = (started.append(i) or i for i in range(40))
    for r in ordered_map(work, items, workers=2, ahead=1):
        assert len(started) <= r + 1 + 3  # never more than workers + ahead taken beyond what was handed back
    assert most[0] <= 2


def test_one_worker_is_a_plain_loop_on_this_thread():
    here = threading.get_ident()
    assert list(ordered_map(lambda i: threading.get_ident() == here, range(3), workers=1)) == [True] * 3
