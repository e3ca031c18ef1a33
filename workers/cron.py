"""``rq cron workers/cron.py``: enqueue the scheduler tick every minute.

Any number of cron processes may run: the tick takes work with row locks
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and deliveries are unique, so an extra tick
is only wasted effort, never a second email.
"""

from rq import cron

from course.queue import TICK_QUEUE
from workers.tasks import tick

cron.register(tick, queue_name=TICK_QUEUE, interval=60, job_timeout=300, result_ttl=600,
              ttl=120)
