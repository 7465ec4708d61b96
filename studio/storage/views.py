"""The Storage page (each team's disk use, quota and recent deletions) and
the delete / restore actions behind the Delete… buttons of the dataset, job
and artifact pages. Who may delete is ``services.may_delete`` (the one
policy); another team's things are 404 here as everywhere."""

from __future__ import annotations

from django.conf import settings
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from studio.accounts.models import Team
from studio.accounts.selectors import team_roles_for_user
from studio.artifacts.selectors import artifact_get_for_user
from studio.catalog.selectors import base_model_get_for_user
from studio.datasets.selectors import dataset_get_for_user
from studio.jobs.selectors import job_get_for_user
from studio.storage.models import Deletion
from studio.storage.selectors import (deletions_for_teams, describe, item_bytes, largest_items,
                                      removal_bytes, removal_plan, team_storage_usage)
from studio.storage.services import StorageRefusal, may_delete, may_restore, storage_delete, storage_restore

TARGETS = {
    "dataset": lambda user, pk: dataset_get_for_user(user=user, dataset_id=pk),
    "job": lambda user, pk: job_get_for_user(user=user, job_id=pk),
    "artifact": lambda user, pk: artifact_get_for_user(user=user, artifact_id=pk),
    "model": lambda user, pk: base_model_get_for_user(user=user, base_model_id=pk),
}


def _target(request, kind: str, pk: int):
    if kind not in TARGETS:
        raise Http404("nothing of that kind can be deleted")
    return TARGETS[kind](request.user, pk)


def storage_page(request):
    roles = team_roles_for_user(user=request.user)
    teams = []
    for team in Team.objects.filter(pk__in=roles).order_by("name"):
        deletions = list(deletions_for_teams(team_ids=[team.pk]))
        for deletion in deletions:
            deletion.restorable = (deletion.is_pending and deletion.purge_started_at is None
                                   and may_restore(user=request.user, deletion=deletion))
        teams.append({"team": team, "role": roles[team.pk], "usage": team_storage_usage(team_id=team.pk),
                      "largest": largest_items(team_id=team.pk), "deletions": deletions})
    return render(request, "storage/page.html", {
        "teams": teams, "retention_hours": settings.DELETED_RETENTION_HOURS,
        "just_deleted": request.GET.get("deleted", "")})


def storage_delete_view(request, kind: str, pk: int):
    """GET: what the delete removes and what depends on it; POST: do it
    (``chain`` = also the dependents). A refusal is shown on the same page."""
    target = _target(request, kind, pk)
    plan = removal_plan(target)
    error, status = None, 200
    if request.method == "POST":
        try:
            deletion = storage_delete(user=request.user, target=target, chain=request.POST.get("chain") == "1",
                                      request=request)
        except StorageRefusal as refusal:
            error, status = refusal, refusal.status
        else:
            return redirect(f"/storage/?deleted={deletion.pk}#deletion-{deletion.pk}")
    elif not may_delete(user=request.user, obj=target):
        status = 403
    return render(request, "storage/confirm.html", {
        "target": target, "label": describe(target), "kind": kind, "error": error,
        "allowed": may_delete(user=request.user, obj=target),
        "parts": [(describe(obj), obj) for obj in plan.parts],
        "dependents": [(describe(obj), obj) for obj in plan.dependents],
        "bytes": removal_bytes(plan.removes(chain=False)), "chain_bytes": removal_bytes(plan.removes(chain=True)),
        "target_bytes": item_bytes(target), "retention_hours": settings.DELETED_RETENTION_HOURS}, status=status)


@require_POST
def storage_restore_view(request, deletion_id: int):
    roles = team_roles_for_user(user=request.user)
    deletion = get_object_or_404(Deletion.objects.filter(team_id__in=roles) if not request.user.is_staff
                                 else Deletion.objects, pk=deletion_id)
    try:
        storage_restore(user=request.user, deletion_id=deletion.pk, request=request)
    except StorageRefusal as refusal:
        return render(request, "storage/confirm.html", {"error": refusal, "label": deletion.label,
                                                        "restoring": True}, status=refusal.status)
    return redirect(f"/storage/#deletion-{deletion.pk}")
