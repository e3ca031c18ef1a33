"""``rq cron workers/cron.py``: enqueue the scheduler tick every minute, the flush of
buffered opens and clicks every 5 seconds, every minute the confirmation emails signups
are still owed, and every 5 minutes a sweep that re-enqueues outgoing webhooks whose jobs
Redis lost.

Any number of cron processes may run: the tick takes work with row locks
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and deliveries are unique, so an extra tick
is only wasted effort, never a second email.
"""

from rq import cron

from course.queue import TICK_QUEUE
from workers.routine_logs import quiet_routine_jobs
from workers.tasks import flush_tracking, requeue_webhooks, send_owed_confirmations, tick

quiet_routine_jobs()  # "Enqueued job flush_tracking ..." every 5 s is logged at DEBUG

cron.register(tick, queue_name=TICK_QUEUE, interval=60, job_timeout=300, result_ttl=600,
              ttl=120)
# Opens and clicks wait in Redis until this moves them to the database (a lock keeps one
# flush at a time; a short ttl drops flushes a busy worker could not start in time).
cron.register(flush_tracking, queue_name=TICK_QUEUE, interval=5, job_timeout=300,
              result_ttl=60, ttl=30, failure_ttl=3600)
# Outgoing webhooks are rows first and jobs second; a row whose job vanished (Redis
# flushed or down) is found here and enqueued again under the same job id.
cron.register(requeue_webhooks, queue_name=TICK_QUEUE, interval=300, job_timeout=120,
              result_ttl=600, ttl=240, failure_ttl=3600)
# Signups are rows first and jobs second too: a confirmation Redis could not take (it was
# down during the signup) or lost is found here and queued again.
cron.register(send_owed_confirmations, queue_name=TICK_QUEUE, interval=60, job_timeout=120,
              result_ttl=600, ttl=120, failure_ttl=3600)
