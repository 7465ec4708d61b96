"""Reads of the audit log: a team admin reads their own teams' entries only."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import QuerySet

from studio.accounts.selectors import admin_team_ids_for_user
from studio.audit.models import AuditEntry


def audit_entries_for_admin(*, user, action: str = "", user_id: int | None = None) -> QuerySet[AuditEntry]:
    """The entries of the teams ``user`` administers, newest first, narrowed
    to one action and/or one acting user when given. Empty for a non-admin."""
    entries = AuditEntry.objects.filter(team_id__in=admin_team_ids_for_user(user=user)).select_related("team")
    if action:
        entries = entries.filter(action=action)
    if user_id is not None:
        entries = entries.filter(user_id=user_id)
    return entries.order_by("-at", "-pk")


def audit_users_for_admin(*, user):
    """The users who appear in the admin's teams' log, for the user filter
    (members who left their team still appear: their entries stay)."""
    team_ids = admin_team_ids_for_user(user=user)
    return (get_user_model().objects.filter(audit_entries__team_id__in=team_ids).distinct()
            .order_by("username").only("pk", "username"))
