"""Celery tasks. Thin: the work is in worker.runner. Every kind of job
(training, merging, dataset analysis …) arrives as the one ``run_job``
wake-up; the kind table (``studio.jobs.kinds``) says which function runs it."""

import logging
import threading

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown
from django.db import connection

from worker.estimates import base_model_facts as base_model_facts_now
from worker.playground import playground_generate as playground_generate_now
from worker.serving import serve_completion as serve_completion_now
from worker.registry import start_registry, stop_registry
from worker.runner import recover_lost_jobs_forever, take_back_from_dead_namesake
from worker.runner import run_job as run_job_now
from worker.webhooks import deliver_for_job, retry as retry_webhook_now

log = logging.getLogger(__name__)
_stop_recovery = threading.Event()


@shared_task(name="worker.tasks.run_job", acks_late=True)
def run_job(job_id: int) -> str:
    return run_job_now(job_id, worker_name=run_job.request.hostname or "")


@shared_task(name="worker.tasks.base_model_facts")
def base_model_facts(base_model_id: int) -> int:
    return base_model_facts_now(base_model_id)


@shared_task(name="worker.tasks.deliver_webhooks", acks_late=True)
def deliver_webhooks(job_id: int) -> int:
    return deliver_for_job(job_id)


@shared_task(name="worker.tasks.retry_webhook", acks_late=True)
def retry_webhook(delivery_id: int) -> str:
    return retry_webhook_now(delivery_id)


@shared_task(name="worker.tasks.playground_generate")
def playground_generate(reply_channel: str, request: dict) -> None:
    playground_generate_now(reply_channel, request)


@shared_task(name="worker.tasks.serve_completion")
def serve_completion(reply_channel: str, request: dict) -> None:
    serve_completion_now(reply_channel, request)


@worker_ready.connect
def start_recovering_lost_jobs(sender, **kwargs):
    # Before this worker consumes anything (and before its registry thread
    # takes over its name's row): the jobs of the dead worker it replaces.
    try:
        take_back_from_dead_namesake(sender.hostname)
    except Exception:  # the periodic recovery below takes them back later
        log.exception("taking back the jobs of this worker's dead namesake failed")
    finally:
        connection.close()
    threading.Thread(target=recover_lost_jobs_forever, args=(_stop_recovery,), name="recover-lost-jobs",
                     daemon=True).start()


@worker_ready.connect
def register_worker_node(sender, **kwargs):
    # sender is the worker's consumer: its node name ("gpu0@box") and the
    # queues it consumes (-Q: one device pool per worker).
    start_registry(sender.hostname, ",".join(sorted(sender.app.amqp.queues.consume_from)))


@worker_shutdown.connect
def unregister_worker_node(**kwargs):
    stop_registry()


@worker_shutdown.connect
def stop_recovering_lost_jobs(**kwargs):
    _stop_recovery.set()
