"""Recording a job's events: stored first (durable), then pushed live.

The database is the source of truth. The push to the channel layer
happens after the commit and may fail (Redis restarting): browsers then
catch up from the database when they reconnect.
"""

from __future__ import annotations

import logging

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.db.models import F

from studio.channel_sends import group_send_now
from studio.jobs.models import Job, JobEvent

log = logging.getLogger(__name__)


def job_group_name(job_id: int) -> str:
    return f"job-{job_id}"


def _publish(job_id: int, message: dict) -> None:
    try:
        group_send_now(job_group_name(job_id), {"type": "job.event", **message},
                       layer=get_channel_layer(settings.BROADCAST_CHANNEL_LAYER))
    except Exception as exc:  # a live push is best effort; the event is stored
        log.warning("could not push event %s of job %s live: %s", message["seq"], job_id, exc)


def job_event_record(*, job_id: int, kind: str, data: dict, job_updates: dict | None = None) -> JobEvent:
    """Append an event with the next seq, optionally updating job fields in
    the same transaction, and push it to viewers once committed."""
    with transaction.atomic():
        Job.objects.filter(pk=job_id).update(last_seq=F("last_seq") + 1, **(job_updates or {}))
        seq = Job.objects.values_list("last_seq", flat=True).get(pk=job_id)
        event = JobEvent.objects.create(job_id=job_id, seq=seq, kind=kind, data=data)
        transaction.on_commit(lambda: _publish(job_id, event.as_message()))
    return event
