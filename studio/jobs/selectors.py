"""Reads of jobs and events, always scoped to the user's teams."""

from pathlib import Path

from django.conf import settings
from django.shortcuts import get_object_or_404

from studio.accounts.selectors import team_ids_for_user
from studio.jobs.models import Job, JobEvent


def job_list_for_user(*, user):
    return Job.objects.filter(team_id__in=team_ids_for_user(user=user)).select_related("owner", "dataset",
                                                                                        "base_model")


def job_get_for_user(*, user, job_id: int) -> Job:
    """The job, or 404 when it does not exist or belongs to another team."""
    return get_object_or_404(job_list_for_user(user=user), pk=job_id)


def job_visible_to(*, user, job_id: int) -> bool:
    return job_list_for_user(user=user).filter(pk=job_id).exists()


EVENT_PAGE_SIZE = 5000  # events read from the database per query


def job_events_after(*, job_id: int, after: int, limit: int = EVENT_PAGE_SIZE) -> list[dict]:
    events = JobEvent.objects.filter(job_id=job_id, seq__gt=after).order_by("seq")[:limit]
    return [event.as_message() for event in events]


def job_stop_requested(*, job_id: int) -> bool:
    return Job.objects.filter(pk=job_id, status=Job.Status.CANCELLING).exists()


def job_output_dir(job_id: int) -> Path:
    return Path(settings.MEDIA_ROOT) / "jobs" / str(job_id)


def job_latest_checkpoint(job: Job) -> Path | None:
    """The newest complete checkpoint a stopped training job left behind."""
    from tuning.checkpoints import latest

    if job.kind != Job.Kind.TRAIN or job.status not in (Job.Status.CANCELLED, Job.Status.FAILED):
        return None
    return latest(job_output_dir(job.pk) / "checkpoints")
