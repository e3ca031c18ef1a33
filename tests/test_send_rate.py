"""The shared send rate: one reservation clock in Redis for every worker on every host.

These check the arithmetic of reservations (what each caller is told to wait), not the
wall clock; bench/send_rate.py measures the rate real workers achieve.
"""

from __future__ import annotations

import itertools
import threading

import pytest

from course import sendstate


def test_no_rate_means_no_waiting(app):
    with app.app_context():
        assert sendstate.reserve(1000) == 0.0
        assert sendstate.chunk_size(2500) == 1000
        assert sendstate.chunk_size(7) == 7


def test_reservations_queue_up_at_the_configured_rate(make_app):
    app = make_app(SEND_RATE=100.0)
    with app.app_context():
        waits = [sendstate.reserve(50) for _ in range(4)]
    # 50 messages at 100/s take half a second of the shared clock each.
    assert waits[0] == pytest.approx(0.0, abs=0.05)
    for i, wait in enumerate(waits):
        assert wait == pytest.approx(0.5 * i, abs=0.05)


def test_many_callers_share_one_clock(make_app):
    """Twelve workers reserving at once are spread out as if there were one."""
    app = make_app(SEND_RATE=1000.0)
    starts: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        with app.app_context():
            start, _ = sendstate.reserve_slot(100)
        with lock:
            starts.append(start)

    threads = [threading.Thread(target=worker) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every caller got its own 0.1 s slot right after the previous one: no two overlap.
    # (Slots are on Redis's clock, so how fast the threads ran does not matter.)
    starts.sort()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx([0.1] * 11, abs=0.002)


def test_with_a_rate_requests_carry_about_one_second_of_mail(make_app):
    app = make_app(SEND_RATE=40.0)
    with app.app_context():
        assert sendstate.chunk_size(1000) == 40
        assert sendstate.chunk_size(10) == 10
    slow = make_app(SEND_RATE=0.5)
    with slow.app_context():
        assert sendstate.chunk_size(1000) == 1
