"""The RQ worker, aware of the Flask app.

The app is built once in the worker process (the worker entry point is one of the two
places that call ``create_app``); every job runs inside a fresh app context pushed just
for it, in the forked work horse, with database connections never shared across a fork.

Run it with ``python -m workers.worker`` or ``rq worker -w workers.worker.FlaskWorker``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from flask import Flask
from rq import Queue, SimpleWorker, Worker
from rq.job import Job

from course.queue import QUEUES
from workers import routine_logs


class AppContextMixin:
    """Builds (or takes) the app once, then pushes a fresh app context around every job."""

    def __init__(self, *args: Any, app: Flask | None = None, **kwargs: Any):
        if app is None:
            from course import create_app

            app = create_app()
        self.app = app
        self._app_pid = os.getpid()
        routine_logs.quiet_routine_jobs()
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]

    def perform_job(self, job: Job, queue: Queue, execution: Any) -> bool:
        from course.extensions import db

        with self.app.app_context(), routine_logs.running(job.func_name):
            if os.getpid() != self._app_pid:
                # A forked work horse: drop pooled connections inherited from the parent.
                db.engine.dispose(close=False)
            try:
                return bool(super().perform_job(job, queue, execution))  # type: ignore[misc]
            finally:
                db.session.remove()


class FlaskWorker(AppContextMixin, Worker):
    """The production worker: forks a work horse per job, as RQ's own worker does."""


class SimpleFlaskWorker(AppContextMixin, SimpleWorker):
    """Runs jobs in its own process: for tests whose clock (time-machine) jobs must see."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a Minicourse worker.")
    parser.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    parser.add_argument("--name", default=None, help="worker name (default: host and pid)")
    parser.add_argument("-l", "--logging-level", default="INFO")
    args = parser.parse_args(argv)

    from course import ConfigError, CourseError, create_app
    from course.dbcheck import schema_problem
    from course.queue import redis_connection
    from course.sending import warm_up_worker

    try:
        app = create_app()
    except (ConfigError, CourseError) as exc:
        print(f"minicourse worker: {exc}", file=sys.stderr)
        return 1
    with app.app_context():
        problem = schema_problem()
        if problem:
            print(f"minicourse worker: {problem}", file=sys.stderr)
            return 1
        conn = redis_connection()
        warm_up_worker()  # before the first fork: every work horse inherits it
    logging.getLogger("minicourse").info("worker using Redis at %s", app.config["REDIS_URL"])
    worker = FlaskWorker(list(QUEUES), connection=conn, app=app, name=args.name)
    worker.work(burst=args.burst, with_scheduler=True, logging_level=args.logging_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
