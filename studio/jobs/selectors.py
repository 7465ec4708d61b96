"""Reads of jobs and events, always scoped to the user's teams."""

from django.core.paginator import Page, Paginator
from django.shortcuts import get_object_or_404

from studio.accounts.selectors import team_ids_for_user
from studio.jobs.models import Job, JobEvent, job_output_dir  # noqa: F401 (job_output_dir: read from here too)


def job_list_for_user(*, user):
    return Job.objects.filter(team_id__in=team_ids_for_user(user=user)).select_related("owner", "dataset",
                                                                                        "base_model")


JOBS_PER_PAGE = 50
# What the job list shows of a job: its config snapshot and the rows it points at stay unread.
LISTED_FIELDS = ("pk", "team_id", "name", "kind", "status", "progress_step", "progress_total", "last_loss",
                 "created_at", "owner__username")


def job_list_page_for_user(*, user, page: str | None) -> Page:
    """One page of the user's teams' jobs, newest first: the database counts them and returns the page's rows
    (``?page=`` past the end gives the last page, nonsense the first)."""
    jobs = (Job.objects.filter(team_id__in=team_ids_for_user(user=user)).select_related("owner")
            .only(*LISTED_FIELDS).order_by("-created_at", "-pk"))
    return Paginator(jobs, JOBS_PER_PAGE).get_page(page)


def job_get_for_user(*, user, job_id: int) -> Job:
    """The job, or 404 when it does not exist or belongs to another team."""
    return get_object_or_404(job_list_for_user(user=user), pk=job_id)


EVENT_PAGE_SIZE = 5000  # events read from the database per query


def job_events_after(*, job_id: int, after: int, limit: int = EVENT_PAGE_SIZE) -> list[dict]:
    events = JobEvent.objects.filter(job_id=job_id, seq__gt=after, superseded=False).order_by("seq")[:limit]
    return [event.as_message() for event in events]


def job_stop_requested(*, job_id: int) -> bool:
    return Job.objects.filter(pk=job_id, status__in=(Job.Status.CANCELLING, Job.Status.PREEMPTING)).exists()
