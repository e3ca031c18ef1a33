"""RQ's lines about routine jobs (flush, tick, webhook sweep) go to DEBUG; the rest keep INFO.

The records are logged through RQ's own logger names, exactly as RQ words them, with the
filter installed as the worker and the cron install it. ``tests/test_quickstart.py`` shows
the outcome end to end: an idle ``flask dev`` prints nothing after its ready banner.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from workers.routine_logs import quiet_routine_jobs, running

WORKER = "Worker w1"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(params=["rq.worker", "rq.cron"])
def rq_logger(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, Collect]]:
    logger = logging.getLogger(request.param)
    level, propagate = logger.level, logger.propagate
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    quiet_routine_jobs()
    yield logger, handler
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.mark.parametrize("message, args", [
    ("%s: %s: %s (%s)", (WORKER, "minicourse-tick", "workers.tasks.flush_tracking()", "j1")),
    ("Successfully completed %s job in %ss on worker %s", ("workers.tasks.tick()", "0.1", "w1")),
    ("Enqueued job flush_tracking to queue minicourse-tick", ()),
    ("Enqueued job requeue_webhooks to queue minicourse-tick", ()),
    ("%s: cleaning registries for queue: %s", (WORKER, "minicourse-mail")),
    ("%s: cleaning group registries", (WORKER,)),
])
def test_routine_job_lines_are_dropped_at_info(rq_logger, message, args):
    logger, handler = rq_logger
    logger.info(message, *args)
    assert handler.records == []


def test_routine_job_lines_show_as_debug_when_debug_is_on(rq_logger):
    logger, handler = rq_logger
    logger.setLevel(logging.DEBUG)
    logger.info("Enqueued job tick to queue minicourse-tick")
    [record] = handler.records
    assert (record.levelno, record.levelname) == (logging.DEBUG, "DEBUG")


def test_lines_naming_only_the_job_id_are_quiet_while_a_routine_job_runs(rq_logger):
    logger, handler = rq_logger
    with running("workers.tasks.flush_tracking"):
        logger.info("%s: %s: %s (%s)", WORKER, "minicourse-tick", "Job OK", "j1")
        logger.info("%s: job %s result is kept for %s seconds", WORKER, "j1", 60)
    assert handler.records == []
    logger.info("%s: job %s result is kept for %s seconds", WORKER, "j1", 60)  # finished
    assert [r.levelname for r in handler.records] == ["INFO"]


def test_mail_jobs_and_trouble_with_routine_jobs_keep_their_level(rq_logger):
    logger, handler = rq_logger
    with running("workers.tasks.send_deliveries"):
        logger.info("%s: %s: %s (%s)", WORKER, "minicourse-mail", "Job OK", "j2")
    logger.info("Enqueued job send_confirmation to queue minicourse-mail")
    with running("workers.tasks.flush_tracking"):
        logger.warning("%s: job %s failed", WORKER, "j3")
    logger.error("Successfully completed workers.tasks.tick() job?")  # any ERROR stays
    assert [r.levelname for r in handler.records] == ["INFO", "INFO", "WARNING", "ERROR"]


def test_installing_twice_adds_one_filter():
    quiet_routine_jobs()
    quiet_routine_jobs()
    for name in ("rq.worker", "rq.cron"):
        assert len(logging.getLogger(name).filters) == 1
