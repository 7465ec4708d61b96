"""Webhook deliveries on a worker (the interactive queue): the first try of
each when a job ends, and each retry as a task of its own with the back-off
as its countdown, so no worker sits waiting for a slow receiver's next try."""

from __future__ import annotations

from django.conf import settings

from studio.api.models import WebhookDelivery
from studio.celery import app as celery_app
from studio.notifications.webhooks import webhook_delivery_send, webhooks_deliver_for_job

RETRY_TASK = "worker.tasks.retry_webhook"


def retry_later(delivery_id: int, delay_s: float) -> None:
    celery_app.send_task(RETRY_TASK, args=[delivery_id], countdown=delay_s, queue=settings.PLAYGROUND_QUEUE)


def deliver_for_job(job_id: int) -> int:
    return len(webhooks_deliver_for_job(job_id, schedule_retry=retry_later))


def retry(delivery_id: int) -> str:
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING or not delivery.endpoint.active:
        return "skipped"  # deleted, delivered meanwhile, or switched off by its admin
    return webhook_delivery_send(delivery=delivery, schedule_retry=retry_later).status
