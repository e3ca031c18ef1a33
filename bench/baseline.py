"""The baseline run: the naive way (one RQ job, one API call per email) on a sample.

The emails are the real lesson, personalised the same way, sent to the same local server
with the same latency by the same number of workers; only the way of sending differs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import IO, Any

from flask import Flask
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from . import procs
from .procs import log

QUEUE = "bench-naive"


@dataclass
class BaselineResult:
    emails: int
    finished: int
    failed: int
    wall: float
    cpu: float
    peak_rss: int

    @property
    def rate(self) -> float:
        return self.finished / self.wall if self.wall > 0 else 0.0


def personalised_messages(app: Flask, count: int) -> list[dict[str, Any]]:
    """``count`` emails of the first lesson, each filled in for its own recipient."""
    from course.content import current_course
    from course.mail import substitute
    from course.render import recipient_for, render_lesson

    with app.app_context():
        course = current_course()
        rendered = render_lesson(course, course.lessons[0])
        t = rendered.template
        out = []
        for i in range(count):
            email, name = f"naive{i}@bench.example.org", f"Reader {i}"
            r = recipient_for(rendered, delivery_id=10_000_000 + i, subscriber_id=i,
                              email=email, name=name)
            out.append(dict(
                message=dict(from_email=t.from_email, from_name=t.from_name, to_email=email,
                             to_name=name, subject=substitute(t.subject, r.substitutions),
                             text=substitute(t.text, r.substitutions),
                             html=substitute(t.html, r.substitutions)),
                headers=r.headers, custom_args=r.custom_args,
            ))
    return out


def run_baseline(app: Flask, conn: Redis, *, count: int, workers: int, server_url: str,
                 api_key: str, env: dict[str, str], logfile: IO[bytes],
                 timeout: float) -> BaselineResult:
    """Start plain RQ workers, enqueue one job per email, time until all have finished."""
    messages = personalised_messages(app, count)
    queue = Queue(QUEUE, connection=conn)
    argv = [sys.executable, "-m", "rq.cli", "worker", "--url", env["REDIS_URL"],
            "--path", str(procs.ROOT), "--name", "{name}", "--logging_level", "WARNING",
            QUEUE]
    started, names = procs.start_processes(argv, workers, env, logfile, "bench-naive")
    try:
        procs.wait_for_workers(conn, names, started)
        pids = [p.pid for p in started]
        with procs.MemorySampler(pids) as sampler:
            cpu0 = procs.cpu_seconds(pids)
            t0 = time.perf_counter()
            queue.enqueue_many([
                Queue.prepare_data("bench.naive_jobs.send_one",
                                   args=(server_url, api_key, m["message"], m["headers"],
                                         m["custom_args"]),
                                   result_ttl=3600, timeout=600)
                for m in messages
            ])
            finished, failed = _wait(queue, count, t0, timeout)
            wall = time.perf_counter() - t0
            _wait_idle(queue)
            cpu = procs.cpu_seconds(pids) - cpu0
    finally:
        procs.stop(started)
    return BaselineResult(count, finished, failed, wall, cpu, sampler.max_rss())


def _wait(queue: Queue, count: int, t0: float, timeout: float) -> tuple[int, int]:
    done_reg = FinishedJobRegistry(queue=queue)
    failed_reg = FailedJobRegistry(queue=queue)
    last_log = time.perf_counter()
    finished = failed = 0
    while time.perf_counter() - t0 < timeout:
        finished, failed = done_reg.count, failed_reg.count
        if finished + failed >= count:
            break
        if time.perf_counter() - last_log >= 1.0:
            last_log = time.perf_counter()
            log(f"baseline: {finished:,}/{count:,} sent ({time.perf_counter() - t0:.1f} s)")
        time.sleep(0.02)
    return finished, failed


def _wait_idle(queue: Queue, timeout: float = 10.0) -> None:
    """Let the last work horses exit, so their CPU is counted in their worker's."""
    from rq.registry import StartedJobRegistry

    deadline = time.monotonic() + timeout
    started = StartedJobRegistry(queue=queue)
    while time.monotonic() < deadline and started.count:
        time.sleep(0.02)
    time.sleep(0.1)
