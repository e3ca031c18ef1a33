"""Job functions. Each takes ids, reloads rows, and is safe to run twice.

They run inside the app context the worker pushes per job (see ``workers.worker``).
"""

from __future__ import annotations

from course import confirmations, health, pipeline, tracking_buffer, webhooks_out


def tick() -> dict[str, int]:
    """The scheduler tick, enqueued every minute by ``rq cron workers/cron.py``."""
    result = pipeline.tick()
    health.record_tick()
    return {"created": result.created, "enqueued": result.enqueued, "finished": result.finished}


def send_deliveries(delivery_ids: list[int]) -> int:
    """Send one batch; deliveries already claimed are skipped, so duplicates are harmless."""
    return pipeline.send_deliveries(delivery_ids)


def send_confirmation(signup_request_id: int) -> bool:
    """Send one signup's confirmation (claimed first, so a duplicate job sends nothing)."""
    return confirmations.send(signup_request_id)


def send_owed_confirmations() -> int:
    """Queue the confirmations signups are still owed (Redis was down when they came)."""
    return confirmations.send_owed()


def flush_tracking() -> int:
    """Move buffered opens and clicks into the database (every few seconds, from the cron)."""
    return tracking_buffer.flush()


def deliver_webhook(outgoing_webhook_id: int) -> str:
    """POST one outgoing webhook; raises on failure so RQ retries it with backoff."""
    return webhooks_out.deliver(outgoing_webhook_id)


def requeue_webhooks() -> int:
    """Enqueue outgoing webhooks whose jobs Redis lost (run it from the tick or cron)."""
    return webhooks_out.requeue_lost()
