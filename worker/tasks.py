"""Celery tasks. Thin: the work is in worker.runner."""

import threading

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown

from worker.runner import recover_lost_jobs_forever
from worker.runner import run_job as run_job_now

_stop_recovery = threading.Event()


@shared_task(name="worker.tasks.run_job", acks_late=True)
def run_job(job_id: int) -> str:
    return run_job_now(job_id, worker_name=run_job.request.hostname or "")


@worker_ready.connect
def start_recovering_lost_jobs(**kwargs):
    threading.Thread(target=recover_lost_jobs_forever, args=(_stop_recovery,), name="recover-lost-jobs",
                     daemon=True).start()


@worker_shutdown.connect
def stop_recovering_lost_jobs(**kwargs):
    _stop_recovery.set()
