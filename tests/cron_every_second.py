"""A cron config for tests: the real tick job, every second instead of every minute."""

from rq import cron

from course.queue import TICK_QUEUE
from workers.tasks import tick

cron.register(tick, queue_name=TICK_QUEUE, interval=1, job_timeout=120, result_ttl=60)
