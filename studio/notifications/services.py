"""Telling a job's owner how it ended: in the app always, by e-mail when the
instance has a mail server (EMAIL_HOST) and the user an address."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from studio.notifications.models import Notification

log = logging.getLogger(__name__)
LEVELS = {"succeeded": "success", "failed": "error", "cancelled": "info"}


def notification_create_for_job(*, job, status: str, message: str = "") -> Notification | None:
    """A notice to the job's owner; sent by e-mail after the commit when mail is set up."""
    if job.owner_id is None:
        return None
    text = f"{job.kind.capitalize()} job #{job.pk} “{job.name}” {status}" + (f": {message}" if message else "")
    notice = Notification.objects.create(user_id=job.owner_id, job=job, level=LEVELS.get(status, "info"),
                                         message=text[:500])
    email = job.owner.email
    if settings.EMAIL_NOTIFICATIONS and email:
        link = f"{settings.STUDIO_BASE_URL.rstrip('/')}{job.get_absolute_url()}" if settings.STUDIO_BASE_URL else ""
        transaction.on_commit(lambda: _send(email, text, link))
    return notice


def notification_create(*, user, message: str, level: str = "info", email_link: str = "",
                        by_email: bool = True) -> Notification:
    """A notice to ``user`` about something that concerns them (a team invitation, a role change);
    e-mailed too when mail is set up and they have an address (unless ``by_email`` is False: a mail
    about it went already)."""
    notice = Notification.objects.create(user=user, level=level, message=message[:500])
    if by_email and settings.EMAIL_NOTIFICATIONS and user.email:
        transaction.on_commit(lambda: _send(user.email, message, email_link))
    return notice


def send_link_by_email(*, address: str, text: str, link: str) -> None:
    """A message with a link to an address that may have no account yet (an invitation), after the commit."""
    transaction.on_commit(lambda: _send(address, text, link))


def _send(address: str, text: str, link: str) -> None:
    try:
        send_mail(subject=f"[Tuning Studio] {text[:120]}", message=f"{text}\n\n{link}".strip(),
                  from_email=None, recipient_list=[address])
    except Exception:  # a mail server being down must not fail the job's ending
        log.exception("could not e-mail %s", address)


def notifications_mark_read(*, user, notification_ids: list[int] | None = None) -> int:
    """Mark the user's notices read (all of them when no ids are given)."""
    unread = Notification.objects.filter(user=user, read_at__isnull=True)
    if notification_ids is not None:
        unread = unread.filter(pk__in=notification_ids)
    return unread.update(read_at=timezone.now())
