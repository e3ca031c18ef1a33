"""What the course owner can do to one subscriber, apart from HTTP."""

from __future__ import annotations

from sqlalchemy import update

from .content import current_course
from .extensions import db
from .models import Delivery, DeliveryStatus, Status, Subscriber
from .schedule import next_send_time
from .timeutil import utcnow


def pause(subscriber_id: int) -> bool:
    """Stop sending to an active subscriber for now; their queued lesson is held back."""
    sub = db.session.get(Subscriber, subscriber_id)
    if sub is None or sub.status != Status.ACTIVE:
        return False
    sub.status = Status.PAUSED
    sub.next_send_at = None
    db.session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == sub.id, Delivery.status == DeliveryStatus.QUEUED)
        .values(status=DeliveryStatus.CANCELLED, error="paused by an admin")
        .execution_options(synchronize_session=False)
    )
    db.session.commit()
    return True


def resume(subscriber_id: int) -> bool:
    """Pick up where they left off: the next lesson at their next local send hour."""
    sub = db.session.get(Subscriber, subscriber_id)
    if sub is None or sub.status != Status.PAUSED:
        return False
    course = current_course()
    now = utcnow()
    slot = next_send_time(now, sub.timezone, cadence_days=0, send_hour=course.send_hour,
                          skip_weekends=course.skip_weekends)
    if slot <= now:
        slot = next_send_time(now, sub.timezone, cadence_days=1, send_hour=course.send_hour,
                              skip_weekends=course.skip_weekends)
    sub.status = Status.ACTIVE
    sub.next_send_at = slot
    db.session.commit()
    return True
