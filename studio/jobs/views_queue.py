"""The team queue page: running and queued jobs, live; admins reorder."""

from django.conf import settings
from django.http import Http404
from django.shortcuts import render
from django.views.decorators.http import require_POST

from studio.accounts.policy import Action, job_allows, refusal
from studio.audit.services import audit_record
from studio.jobs.backfill import reservation_reasons
from studio.jobs.selectors import job_get_for_user
from studio.jobs.selectors_queue import queue_page_for_user
from studio.jobs.services import job_cancel
from studio.jobs.services_queue import job_move, job_preempt_for, job_set_priority
from tuning.errors import ConfigError


def _render(request, *, partial: bool, error: str = "", status: int = 200):
    page = queue_page_for_user(user=request.user)
    reservation_reasons(page.rows)
    context = {"rows": page.rows, "more": sorted(page.more.items()), "error": error,
               "fair_share": settings.FAIR_SHARE, "half_life": settings.FAIR_SHARE_HALF_LIFE_HOURS}
    template = "jobs/_queue_table.html" if partial else "jobs/queue.html"
    return render(request, template, context, status=status)


def job_queue(request):
    return _render(request, partial=False)


def job_queue_table(request):
    """The table alone: polled by the page every few seconds."""
    return _render(request, partial=True)


@require_POST
def job_queue_action(request, job_id: int):
    """Admins: priority, to front / back, preempt a lower-priority run. Members: cancel their own jobs."""
    job = job_get_for_user(user=request.user, job_id=job_id)
    action = request.POST.get("action", "")
    try:
        if action == "cancel":
            if not job_allows(user=request.user, job=job, action=Action.CANCEL):
                raise ConfigError({"cancel": refusal(user=request.user, action=Action.CANCEL, team_id=job.team_id)})
            job_cancel(job=job)
            audit_record(user=request.user, team=job.team, action="job.cancelled", target=job, request=request)
        elif action == "priority":
            try:
                priority = int(request.POST.get("priority", ""))
            except ValueError:
                raise ConfigError({"priority": "must be a whole number from -100 to 100"}) from None
            job_set_priority(job=job, priority=priority, user=request.user)
            audit_record(user=request.user, team=job.team, action="job.reprioritised", target=job,
                         detail={"priority": priority}, request=request)
        elif action == "preempt":
            victim = job_preempt_for(job=job, user=request.user)
            audit_record(user=request.user, team=job.team, action="job.reprioritised", target=job,
                         detail={"preempted": victim.pk, "team_of_preempted": victim.team_id}, request=request)
        elif action in ("front", "back"):
            job_move(job=job, direction=action, user=request.user)
            audit_record(user=request.user, team=job.team, action="job.reprioritised", target=job,
                         detail={"move": action}, request=request)
        else:
            raise Http404
    except ConfigError as exc:
        return _render(request, partial=True, error="; ".join(exc.errors.values()), status=200)
    return _render(request, partial=True)
