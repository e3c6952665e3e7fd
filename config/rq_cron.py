"""RQ's cron scheduler for the data lifecycle: ``rq cron config/rq_cron.py --url $REDIS_URL``.

Jobs land on the image-origin queue and run in ``image-origin worker``; each takes the same
options as its command. A job that finds problems it cannot fix fails (RQ's failed registry).
All four are safe to overlap and to run on several nodes (see README, "Operations").
"""

from rq import cron

from app.jobs import tasks
from app.jobs.queue import QUEUE_NAME

HOURS = 3600

cron.register(tasks.reconcile, QUEUE_NAME, cron="15 1 * * *", job_timeout=6 * HOURS)
cron.register(tasks.gc, QUEUE_NAME, cron="15 3 * * *", job_timeout=6 * HOURS)
cron.register(
    tasks.verify, QUEUE_NAME, kwargs={"sample": 2}, cron="45 4 * * *", job_timeout=6 * HOURS
)
cron.register(tasks.tier, QUEUE_NAME, cron="30 5 * * 0", job_timeout=12 * HOURS)
