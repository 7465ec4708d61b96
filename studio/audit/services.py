"""The only writer of the audit log."""

from __future__ import annotations

import ipaddress

from django.db import models

from studio.audit.models import AuditEntry


def _client_ip(request) -> str | None:
    """The address the request came from. REMOTE_ADDR only: X-Forwarded-For
    is whatever the client chose to send unless a trusted proxy sets it, and
    an audit log must not record a forged address as fact."""
    if request is None:
        return None
    address = request.META.get("REMOTE_ADDR") or ""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:  # test clients and unix sockets send no usable address
        return None


def audit_record(*, user, team, action: str, target: models.Model | None = None, detail: dict | None = None,
                 request=None) -> AuditEntry:
    """Write one entry in the caller's transaction: if the action rolls
    back, so does its entry, and an entry that cannot be written fails the
    action rather than leaving it unrecorded.

    ``user`` may be None (a worker or the system acted) or anonymous;
    ``target`` is any saved model instance (its pk and str() are kept, so the
    entry survives the target's deletion: call this before deleting it).
    Raises ValueError for an action not in AuditEntry.Action (a typo in the
    calling code, caught by its tests).
    """
    if action not in AuditEntry.Action.values:
        raise ValueError(f"unknown audit action {action!r}; add it to AuditEntry.Action")
    if user is not None and not user.is_authenticated:
        user = None
    return AuditEntry.objects.create(
        team=team,
        user=user,
        username=user.get_username() if user else "",
        action=action,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None and target.pk is not None else "",
        target_label=str(target)[:200] if target is not None else "",
        detail=detail or {},
        ip=_client_ip(request),
    )
