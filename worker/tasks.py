"""Celery tasks. Thin: the work is in worker.runner."""

from celery import shared_task

from worker.runner import run_job as run_job_now


@shared_task(name="worker.tasks.run_job", acks_late=True)
def run_job(job_id: int) -> str:
    return run_job_now(job_id, worker_name=run_job.request.hostname or "")
