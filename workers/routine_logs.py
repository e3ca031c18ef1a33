"""RQ's lines about routine jobs are logged at DEBUG, so an idle system's log stays quiet.

The cron enqueues the tracking flush every 5 s, the tick and the catch-up of owed
confirmations every minute and the webhook sweep every 5 minutes, and RQ logs every run
of each at INFO (enqueued, started, completed, "Job OK", result kept): about 50 lines a
minute that scroll the start banner, and with it the admin's one-time password, off the
screen while nothing happens. The worker's own upkeep (cleaning its registries every 10
minutes) is as routine. A filter
on RQ's own loggers demotes those records to DEBUG: ``-l DEBUG`` (worker) or
``--logging-level DEBUG`` (cron) shows them again. What the jobs themselves log keeps its
level (a tick that created deliveries says so at INFO), and so does everything RQ says
about the mail jobs, and its warnings and errors about any job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

# Dotted paths, as RQ's job descriptions and ``Job.func_name`` spell them.
ROUTINE_JOBS = frozenset({
    "workers.tasks.tick",
    "workers.tasks.flush_tracking",
    "workers.tasks.requeue_webhooks",
    "workers.tasks.send_owed_confirmations",  # the cron's minutely catch-up of signups
})
RQ_LOGGERS = ("rq.worker", "rq.cron")

_running_routine_job: ContextVar[bool] = ContextVar("running_routine_job", default=False)
# RQ names a job by its description in the worker's "started" and "completed" lines
# ("workers.tasks.tick()"), and by its bare function name in the cron's "Enqueued job tick
# to queue ..."; the other lines ("Job OK", "result is kept") name only the job's id, and
# are recognised by being logged while a routine job runs. Last, the worker's upkeep.
_MENTIONS = (
    *(f"{path}(" for path in sorted(ROUTINE_JOBS)),
    *(f"Enqueued job {path.rsplit('.', 1)[1]} " for path in sorted(ROUTINE_JOBS)),
    ": cleaning registries for queue: ",
    ": cleaning group registries",
)


class DemoteRoutineJobs(logging.Filter):
    """Turns INFO records about a routine job into DEBUG ones (dropped unless enabled)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not is_routine(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def is_routine(record: logging.LogRecord) -> bool:
    if _running_routine_job.get():
        return True
    message = record.getMessage()
    return any(mention in message for mention in _MENTIONS)


def quiet_routine_jobs() -> None:
    """Install the filter on RQ's loggers (once per process, however often called)."""
    for name in RQ_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DemoteRoutineJobs) for f in logger.filters):
            logger.addFilter(DemoteRoutineJobs())


@contextmanager
def running(func_name: str | None) -> Iterator[None]:
    """Mark the job being performed, so RQ's lines that name it by id only are demoted."""
    token = _running_routine_job.set(func_name in ROUTINE_JOBS)
    try:
        yield
    finally:
        _running_routine_job.reset(token)
