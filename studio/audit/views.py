"""The audit log page: team admins only (others get 404, as for another
team's things, so the page does not even confirm it exists)."""

from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import render

from studio.accounts.selectors import admin_team_ids_for_user
from studio.audit.models import AuditEntry
from studio.audit.selectors import audit_entries_for_admin, audit_users_for_admin

PAGE_SIZE = 50


def _int_or_none(value: str) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def audit_list(request):
    if not admin_team_ids_for_user(user=request.user):
        raise Http404
    action = request.GET.get("action", "")
    if action not in AuditEntry.Action.values:
        action = ""
    user_id = _int_or_none(request.GET.get("user", ""))
    entries = audit_entries_for_admin(user=request.user, action=action, user_id=user_id)
    page = Paginator(entries, PAGE_SIZE).get_page(request.GET.get("page"))
    # The filters travel with the page links.
    filters = "&".join(f"{key}={value}" for key, value in (("action", action), ("user", user_id or "")) if value)
    return render(request, "audit/list.html", {
        "page": page, "actions": AuditEntry.Action.choices, "users": audit_users_for_admin(user=request.user),
        "action": action, "user_id": user_id, "filters": filters,
        "many_teams": len(admin_team_ids_for_user(user=request.user)) > 1})
