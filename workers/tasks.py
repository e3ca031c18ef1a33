"""Job functions. Each takes ids, reloads rows, and is safe to run twice.

They run inside the app context the worker pushes per job (see ``workers.worker``).
"""

from __future__ import annotations

from course import pipeline


def tick() -> dict[str, int]:
    """The scheduler tick, enqueued every minute by ``rq cron workers/cron.py``."""
    result = pipeline.tick()
    return {"created": result.created, "enqueued": result.enqueued, "finished": result.finished}


def send_deliveries(delivery_ids: list[int]) -> int:
    """Send one batch; deliveries already claimed are skipped, so duplicates are harmless."""
    return pipeline.send_deliveries(delivery_ids)


def send_confirmation(subscriber_id: int) -> bool:
    return pipeline.send_confirmation(subscriber_id)
