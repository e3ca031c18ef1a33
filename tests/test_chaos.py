"""Chaos: 2,000 subscribers through the whole course while workers, Redis and SendGrid fail.

Invariants 1 and 2 under fire (the scenario is in tests/chaos_scenario.py): every lesson
is counted from the local SendGrid server's ledger and the database, and the run must end
with ``duplicates`` (accepted twice), ``lost`` (never accepted and not queued) and
``unresolved`` (still unconfirmed) all zero and every subscriber finished. Unconfirmed
lessons along the way are settled by the server's own Event Webhook posts (signed, late,
batched, some twice). It runs on both databases, about a minute each on this 2-core
machine (more when it is busy). ``bench/chaos.py`` runs the same at 20,000 subscribers,
with a two-minute outage and a 429 with ``Retry-After: 120``. ``CHAOS_SEED=n`` replays a
run's choices (kill and flush points, ticks, provider answers); the timing of processes
is never the same twice.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest

from course.models import DeliveryStatus, Status
from tests.chaos_scenario import ChaosReport, ChaosSettings, DeliveryRow, LedgerRow, run_chaos


@pytest.mark.slow
def test_every_lesson_reaches_every_subscriber_once_through_kills_flushes_and_provider_errors(
        make_app, tmp_path):
    seed = os.environ.get("CHAOS_SEED")
    settings = ChaosSettings(subscribers=2000, deadline=150.0, seed=int(seed) if seed else None)
    report = run_chaos(make_app, settings, tmp_path)
    print(report.summary())
    print(report.counts())
    problems = report.problems()
    assert not problems, "\n".join([report.summary(), *problems, report.worker_logs])
    assert report.counts() == "duplicates: 0\nlost: 0\nunresolved: 0"
    # The run was chaotic, or it proved nothing.
    assert report.kills == settings.kills and report.kills_mid_job >= 2 and report.flushes == 1
    assert report.outcomes["429"] and report.outcomes["5xx"] and report.outcomes["timeout"]
    assert report.outcomes["drop before body"] and report.outcomes["drop after reading"]
    assert report.outcomes["drop after accepting"]
    assert report.outage and report.long_retry_after
    assert report.events.get("posted") and report.events.get("repeated")


# The checks themselves: a checker that let everything pass would make the run above prove
# nothing, so each broken promise is planted in an otherwise clean report.

def entry(delivery_id: int, email: str = "a@example.com", subject: str = "Day 1",
          message_id: str = "m1") -> LedgerRow:
    return LedgerRow(delivery_id, email, subject, message_id)


def clean_report() -> ChaosReport:
    """One subscriber, three lessons, all sent once (one after its unconfirmed spell)."""
    report = ChaosReport(subscribers=1, lessons=3, seed=0, backend="none", stale_seconds=10)
    report.deliveries = [
        DeliveryRow(1, 7, "a@example.com", 1, DeliveryStatus.SENT, "", "m1"),
        DeliveryRow(2, 7, "a@example.com", 2, DeliveryStatus.SENT, "", "m2"),
        DeliveryRow(3, 7, "a@example.com", 3, DeliveryStatus.SENT, "", ""),
    ]
    report.ledger = [entry(1), entry(2, subject="Day 2", message_id="m2"),
                     entry(3, subject="Day 3", message_id="m3")]
    report.subscriber_states = Counter({Status.FINISHED: 1})
    return report


def resend_lesson_one(r: ChaosReport) -> None:
    r.ledger.append(entry(1, message_id="m9"))


def same_lesson_twice_by_address(r: ChaosReport) -> None:
    r.ledger.append(entry(9, subject="Day 3", message_id="m3"))


def lost(r: ChaosReport) -> None:
    r.ledger.pop(0)


def failed(r: ChaosReport) -> None:
    r.ledger.pop(0)
    r.deliveries[0] = replace(r.deliveries[0], status=DeliveryStatus.FAILED)


def unresolved(r: ChaosReport) -> None:
    r.deliveries[2] = replace(r.deliveries[2], status=DeliveryStatus.UNCONFIRMED)
    r.subscriber_states = Counter({Status.ACTIVE: 1})


def stuck_queued(r: ChaosReport) -> None:
    r.ledger.pop(0)
    r.deliveries[0] = replace(r.deliveries[0], status=DeliveryStatus.QUEUED)
    r.subscriber_states = Counter({Status.ACTIVE: 1})


def lesson_never_created(r: ChaosReport) -> None:
    r.deliveries.pop()
    r.ledger.pop()
    r.subscriber_states = Counter({Status.ACTIVE: 1})
    r.stranded = [(7, 3)]


def wrong_message_id(r: ChaosReport) -> None:
    r.deliveries[0] = replace(r.deliveries[0], message_id="m2")


@pytest.mark.parametrize("spoil, complaint, figure", [
    (resend_lesson_one, "duplicates", "duplicates: 1"),
    (same_lesson_twice_by_address, "duplicates", "duplicates: 1"),
    (lost, "lost", "lost: 1"),
    (failed, "lost", "lost: 1"),
    (unresolved, "unresolved", "unresolved: 1"),
    (stuck_queued, "not sent at the end", "lost: 0"),
    (lesson_never_created, "never created", "lost: 1"),
    (lesson_never_created, "stranded subscribers", "lost: 1"),
    (wrong_message_id, "another provider message id", "duplicates: 0"),
])
def test_the_chaos_checks_catch_each_broken_promise(
        spoil: Callable[[ChaosReport], None], complaint: str, figure: str):
    report = clean_report()
    assert report.problems() == []
    assert report.counts() == "duplicates: 0\nlost: 0\nunresolved: 0"
    spoil(report)
    assert any(complaint in p for p in report.problems()), report.problems()
    assert figure in report.counts().splitlines()
