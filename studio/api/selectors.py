"""Reads for the API, always within the caller's teams (another team's
ids are "not found", exactly like ids that do not exist)."""

from __future__ import annotations

from studio.api.errors import ApiError, not_found
from studio.artifacts.models import Artifact
from studio.datasets.models import Dataset
from studio.jobs.models import Job, JobEvent


def int_param(query, name: str, *, default: int | None, minimum: int = 0, maximum: int | None = None) -> int | None:
    raw = query.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ApiError(400, f"{name} must be a whole number, not {str(raw)[:40]!r}", field=name) from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ApiError(400, f"{name} must be {bounds}", field=name)
    return value


def page_newest_first(queryset, query, *, default_limit: int = 20, max_limit: int = 100) -> tuple[list, bool]:
    """One page of ``queryset`` newest first, by id: ``after`` is the last id
    of the previous page (ids grow with time, so this is a stable cursor
    even while new rows arrive). Returns (rows, has_more)."""
    limit = int_param(query, "limit", default=default_limit, minimum=1, maximum=max_limit)
    after = int_param(query, "after", default=None, minimum=1)
    if after is not None:
        queryset = queryset.filter(pk__lt=after)
    rows = list(queryset.order_by("-pk")[:limit + 1])
    return rows[:limit], len(rows) > limit


def job_get_in_teams(*, team_ids: list[int], job_id) -> Job:
    job = (Job.objects.filter(team_id__in=team_ids, pk=job_id).select_related("team", "owner")
           .prefetch_related("artifacts").first())
    if job is None:
        raise not_found("fine-tuning job", job_id)
    return job


def job_list_in_team(*, team_id: int):
    return Job.objects.filter(team_id=team_id).select_related("team", "owner").prefetch_related("artifacts")


def job_events_page(*, job: Job, query) -> tuple[list[JobEvent], bool]:
    """Events after seq ``after`` (0: from the start), oldest first, at most ``limit``."""
    after = int_param(query, "after", default=0, minimum=0)
    limit = int_param(query, "limit", default=100, minimum=1, maximum=1000)
    rows = list(JobEvent.objects.filter(job=job, seq__gt=after, superseded=False).order_by("seq")[:limit + 1])
    return rows[:limit], len(rows) > limit


EVAL_FIELDS = ("eval_loss", "perplexity", "accuracy", "f1")


def job_checkpoints(*, job: Job) -> list[dict]:
    """The job's checkpoints, oldest first, each with the training loss and
    the evaluation at its step (None where none ran at that step)."""
    checkpoints = list(JobEvent.objects.filter(job=job, kind="checkpoint", superseded=False).order_by("seq"))
    steps = [event.data.get("step") for event in checkpoints]
    at_step: dict[tuple[str, int], dict] = {}
    # Later events of a step win (a resumed run may repeat a step).
    for event in JobEvent.objects.filter(job=job, kind__in=["metrics", "eval"], data__step__in=steps,
                                         superseded=False).order_by("seq"):
        at_step[(event.kind, event.data.get("step"))] = event.data
    result = []
    for event in checkpoints:
        step = event.data.get("step")
        train, evaluation = at_step.get(("metrics", step), {}), at_step.get(("eval", step), {})
        metrics = {"train_loss": train.get("loss"), **{name: evaluation.get(name) for name in EVAL_FIELDS}}
        result.append({"object": "fine_tuning.job.checkpoint", "id": event.seq, "job": job.pk, "step": step,
                       "path": event.data.get("path"), "metrics": metrics,
                       "created_at": int(event.created_at.timestamp())})
    return result


def artifact_list_in_team(*, team_id: int):
    return Artifact.objects.filter(team_id=team_id)


def artifact_get_in_teams(*, team_ids: list[int], artifact_id) -> Artifact:
    artifact = Artifact.objects.filter(team_id__in=team_ids, pk=artifact_id).first()
    if artifact is None:
        raise not_found("artifact", artifact_id)
    return artifact


def dataset_list_in_team(*, team_id: int):
    return Dataset.objects.filter(team_id=team_id).select_related("team")


def dataset_get_in_teams(*, team_ids: list[int], dataset_id, field: str | None = None) -> Dataset:
    dataset = Dataset.objects.filter(team_id__in=team_ids, pk=dataset_id).select_related("team").first()
    if dataset is None:
        raise not_found("dataset", dataset_id, field=field)
    return dataset
