"""Signed webhooks for finished jobs (the endpoints and deliveries are stored
by the api app's models; sending them is part of telling people how a job
ended, beside the bell and e-mail).

A team admin registers URLs; when a job succeeds, fails or is cancelled,
each active endpoint subscribed to that event gets a POST of
{"id", "object": "event", "type", "created_at", "data": {"job": {...}}}
signed like Stripe's: ``Studio-Signature: t=<unix>,v1=<hex>`` where hex is
HMAC-SHA256(secret, f"{t}.{raw body}"). ``webhook_signature_verify`` is the
reference check a receiver can copy.

Delivery never blocks ``job_finish``: once the job's end is committed,
``webhooks_enqueue_for_job`` sends a Celery task to the interactive queue;
its worker posts each delivery once and schedules every retry as a task of
its own after the back-off (no worker waits through it), recording every
attempt. Receivers must be public addresses (``outbound``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from typing import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from studio.accounts.models import Membership
from studio.accounts.selectors import membership_role
from studio.api.models import WEBHOOK_EVENT_TYPES, WebhookDelivery, WebhookEndpoint
from studio.api.serializers import job_json
from studio.celery import app as celery_app
from studio.jobs.models import Job
from studio.notifications import outbound

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Studio-Signature"
DELIVER_TASK = "worker.tasks.deliver_webhooks"  # sent by name: the web side never imports worker/
RetryScheduler = Callable[[int, float], None]  # (delivery id, seconds from now)
TIMEOUT_S = 10  # per attempt; a receiver should answer 2xx at once and work later
# Seconds to wait before each retry (three tries in all by default); a
# setting so that tests can make it instant.
DEFAULT_RETRY_DELAYS_S = (5, 30)
SIGNATURE_TOLERANCE_S = 300
REFUSED_MESSAGE = ("refused: the URL's host is not a public address (an admin can allow intranet receivers with "
                   "WEBHOOK_ALLOWED_HOSTS)")
UNREACHABLE_MESSAGE = "could not connect to the receiver (refused, timed out or unreachable)"


class WebhookError(ValueError):
    def __init__(self, message: str, *, field: str):
        super().__init__(message)
        self.field = field


# ---- endpoints (a team admin's settings) ----------------------------------


def webhook_endpoint_create(*, user, team, url: str, events: list[str]) -> WebhookEndpoint:
    if membership_role(user=user, team_id=team.pk) != Membership.Role.ADMIN:
        raise WebhookError("Only a team admin can add webhooks", field="team")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError("The URL must start with http:// or https:// and name a host", field="url")
    try:
        outbound.check_literal_host(parts.hostname)
    except outbound.AddressRefused as exc:
        raise WebhookError(f"{exc}: webhooks go to public addresses (an admin can allow intranet receivers with "
                           f"WEBHOOK_ALLOWED_HOSTS)", field="url") from None
    unknown = sorted(set(events) - set(WEBHOOK_EVENT_TYPES))
    if unknown or not events:
        raise WebhookError(f"Pick at least one of {', '.join(WEBHOOK_EVENT_TYPES)}", field="events")
    return WebhookEndpoint.objects.create(team=team, created_by=user, url=url.strip(),
                                          secret="whsec_" + secrets.token_urlsafe(32),
                                          events=[e for e in WEBHOOK_EVENT_TYPES if e in events])


def webhook_endpoint_delete(*, user, endpoint_id: int) -> None:
    """Delete an endpoint of a team the user administers (else DoesNotExist)."""
    admin_teams = Membership.objects.filter(user=user, role=Membership.Role.ADMIN).values("team_id")
    WebhookEndpoint.objects.get(pk=endpoint_id, team_id__in=admin_teams).delete()


# ---- signing ----------------------------------------------------------------


def webhook_signature(*, secret: str, body: bytes, timestamp: int) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def webhook_signature_verify(*, secret: str, body: bytes, header: str, now: float | None = None,
                             tolerance_s: int = SIGNATURE_TOLERANCE_S) -> bool:
    """What a receiver does: recompute the HMAC over "<t>.<raw body>", compare
    in constant time, and refuse old timestamps (a replayed request)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = webhook_signature(secret=secret, body=body, timestamp=timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


# ---- delivery ---------------------------------------------------------------


def webhook_event_type(job: Job) -> str | None:
    event_type = f"fine_tuning.job.{job.status}"
    return event_type if event_type in WEBHOOK_EVENT_TYPES else None


def webhooks_enqueue_for_job(*, job_id: int) -> None:
    """Have a worker deliver the job's finished event (called on commit, so it reads the committed job)."""
    celery_app.send_task(DELIVER_TASK, args=[job_id], queue=settings.PLAYGROUND_QUEUE)


def webhooks_deliver_for_job(job_id: int, *, schedule_retry: RetryScheduler | None = None) -> list[WebhookDelivery]:
    """Send the job's finished event to every subscribed active endpoint of
    its team, each with retries (see ``webhook_delivery_send``); returns the
    deliveries made by this call. Calling it twice for one job sends nothing
    the second time."""
    job = Job.objects.select_related("team", "owner").prefetch_related("artifacts").filter(pk=job_id).first()
    event_type = webhook_event_type(job) if job else None
    if event_type is None:
        return []
    data = {"job": job_json(job, request=None)}
    deliveries = []
    for endpoint in WebhookEndpoint.objects.filter(team_id=job.team_id, active=True):
        if event_type not in endpoint.events:
            continue
        event_id = f"evt_{uuid.uuid4().hex}"
        payload = {"id": event_id, "object": "event", "type": event_type, "created_at": int(time.time()),
                   "data": data}
        try:
            with transaction.atomic():
                delivery = WebhookDelivery.objects.create(endpoint=endpoint, job=job, event_id=event_id,
                                                          event_type=event_type, payload=payload)
        except IntegrityError:
            continue  # already sent (or being sent) for this job
        webhook_delivery_send(delivery=delivery, schedule_retry=schedule_retry)
        deliveries.append(delivery)
    return deliveries


def webhook_delivery_send(*, delivery: WebhookDelivery,
                          schedule_retry: RetryScheduler | None = None) -> WebhookDelivery:
    """POST the delivery's payload (signed afresh, a new timestamp each try)
    and record the attempt. After a failure the next try comes after the
    back-off: ``schedule_retry(delivery_id, delay_s)`` books it (the worker
    sends a task with that countdown, which calls this again); without it,
    this waits and tries again here. The delivery fails after the last try."""
    delays = tuple(getattr(settings, "WEBHOOK_RETRY_DELAYS_S", DEFAULT_RETRY_DELAYS_S))
    body = json.dumps(delivery.payload, separators=(",", ":")).encode()
    endpoint = delivery.endpoint
    while True:
        attempt = delivery.attempts + 1
        status, error = _post(endpoint.url, body, secret=endpoint.secret, event_id=delivery.event_id)
        delivery.attempts, delivery.response_status, delivery.error = attempt, status, error
        if not error:
            delivery.status, delivery.delivered_at = WebhookDelivery.Status.SUCCEEDED, timezone.now()
        elif attempt > len(delays):
            delivery.status = WebhookDelivery.Status.FAILED
        delivery.save(update_fields=["attempts", "response_status", "error", "status", "delivered_at"])
        if delivery.status != WebhookDelivery.Status.PENDING:
            return delivery
        if schedule_retry is not None:
            schedule_retry(delivery.pk, delays[attempt - 1])
            return delivery
        time.sleep(delays[attempt - 1])


def _post(url: str, body: bytes, *, secret: str, event_id: str) -> tuple[int | None, str]:
    """(HTTP status or None, "" on a 2xx else why it failed). The admin sees
    only a generic reason for a failed connection (which port or host
    answered how is for the server log): the delivery log must not become a
    scanner of the network the studio runs in."""
    headers = {"Content-Type": "application/json", "User-Agent": "TuningStudio-Webhooks/1", "Studio-Event-Id": event_id,
               SIGNATURE_HEADER: webhook_signature(secret=secret, body=body, timestamp=int(time.time()))}
    try:
        status = outbound.post(url, body, headers=headers, timeout=TIMEOUT_S)
    except outbound.AddressRefused as exc:
        log.warning("webhook to %s refused: %s", url, exc)
        return None, REFUSED_MESSAGE
    except OSError as exc:
        log.warning("webhook to %s failed: %s: %s", url, type(exc).__name__, exc)
        return None, UNREACHABLE_MESSAGE
    if 200 <= status < 300:
        return status, ""
    # A redirect is a failure: following it would turn the POST into a GET
    # without the body, or send it somewhere the admin did not register.
    return status, f"the receiver answered HTTP {status}"
