"""Reads of jobs and events, always scoped to the user's teams."""

from django.shortcuts import get_object_or_404

from studio.accounts.selectors import team_ids_for_user
from studio.jobs.models import Job, JobEvent, job_output_dir  # noqa: F401 (job_output_dir: read from here too)


def job_list_for_user(*, user):
    return Job.objects.filter(team_id__in=team_ids_for_user(user=user)).select_related("owner", "dataset",
                                                                                        "base_model")


def job_get_for_user(*, user, job_id: int) -> Job:
    """The job, or 404 when it does not exist or belongs to another team."""
    return get_object_or_404(job_list_for_user(user=user), pk=job_id)


EVENT_PAGE_SIZE = 5000  # events read from the database per query


def job_events_after(*, job_id: int, after: int, limit: int = EVENT_PAGE_SIZE) -> list[dict]:
    events = JobEvent.objects.filter(job_id=job_id, seq__gt=after, superseded=False).order_by("seq")[:limit]
    return [event.as_message() for event in events]


def job_stop_requested(*, job_id: int) -> bool:
    return Job.objects.filter(pk=job_id, status__in=(Job.Status.CANCELLING, Job.Status.PREEMPTING)).exists()
