"""Redis and RQ queues for the app, made on first use (never at import).

``course/`` enqueues jobs by dotted path (``workers.tasks.…``) so it never imports the
worker's internals.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry

MAIL_QUEUE = "minicourse-mail"
TICK_QUEUE = "minicourse-tick"
QUEUES = (TICK_QUEUE, MAIL_QUEUE)


def redis_connection() -> Redis:
    ext = current_app.extensions
    conn = ext.get("minicourse_redis")
    if conn is None:
        conn = Redis.from_url(current_app.config["REDIS_URL"], socket_timeout=10,
                              socket_connect_timeout=5, health_check_interval=30)
        ext["minicourse_redis"] = conn
    return conn


def queue(name: str) -> Queue:
    return Queue(name, connection=redis_connection())


def enqueue(func: str, *args: Any, queue_name: str = MAIL_QUEUE, retries: int = 3,
            job_timeout: int = 600, **kwargs: Any) -> Any:
    """Enqueue ``func`` (a dotted path) with bounded, growing retries."""
    return queue(queue_name).enqueue(
        func,
        *args,
        retry=Retry(max=retries, interval=[10, 60, 300][:retries]) if retries else None,
        job_timeout=job_timeout,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        **kwargs,
    )


def request_tick() -> bool:
    """Ask for a tick now rather than at the next minute (after an admin's change).

    A failure is only logged: cron's own tick does the same work within a minute.
    """
    try:
        enqueue("workers.tasks.tick", queue_name=TICK_QUEUE, retries=0)
    except (RedisError, OSError) as exc:
        logging.getLogger(__name__).warning("could not enqueue a tick now: %s", exc)
        return False
    return True
