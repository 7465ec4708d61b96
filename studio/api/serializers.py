"""Rows as the API's JSON. Times are Unix seconds (as in hosted
fine-tuning APIs), ids are integers, and nothing names a server path."""

from __future__ import annotations

from django.urls import reverse

from studio.jobs.forms import SYSTEM_FIELDS
from studio.jobs.models import Job


def unix(moment) -> int | None:
    return int(moment.timestamp()) if moment else None


def job_api_status(job: Job) -> str:
    """The API's status: the studio's, except that "cancelling" (a running
    job asked to stop, finishing its current step) is reported as "running"
    with ``cancel_requested: true``, and "preempting" (stopping at its next
    step to go back to the queue) as "running": the job is still running."""
    return Job.Status.RUNNING if job.status in (Job.Status.CANCELLING, Job.Status.PREEMPTING) else job.status


def job_json(job: Job, *, request) -> dict:
    config = job.config or {}
    # Merge, quantize and evaluate configs name files on the server (sources, *_path): left out, as in
    # every answer of the API; the request's own fields say what was used.
    hyperparameters = {key: value for key, value in config.items()
                       if key not in SYSTEM_FIELDS and key not in ("method_params", "sources", "studio")
                       and not key.endswith(("_path", "_base"))}
    error = None
    if job.status == Job.Status.FAILED:
        error = {"kind": job.failure_kind or Job.FailureKind.ERROR, "message": job.failure_message}
    return {
        "id": job.pk,
        "object": "fine_tuning.job",
        "name": job.name,
        "kind": job.kind,
        "team": job.team.slug,
        "owner": job.owner.get_username() if job.owner else None,
        "model": job.base_model_id,
        "training_file": job.dataset_id,
        "method": {"type": config.get("method"), "params": config.get("method_params", {})},
        "hyperparameters": hyperparameters,
        "status": job_api_status(job),
        "cancel_requested": job.status in (Job.Status.CANCELLING, Job.Status.CANCELLED),
        "error": error,
        "progress": {"step": job.progress_step, "total_steps": job.progress_total, "loss": job.last_loss},
        "last_event_seq": job.last_seq,
        "devices": job.devices,
        "holds": [{"worker": hold.worker_name, "devices": hold.devices, "role": hold.role}
                  for hold in job.current_holds()],
        "artifacts": [artifact.pk for artifact in job.artifacts.all()],
        "created_at": unix(job.created_at),
        "started_at": unix(job.started_at),
        "finished_at": unix(job.finished_at),
        "web_url": request.build_absolute_uri(job.get_absolute_url()) if request else job.get_absolute_url(),
    }


def event_json(event) -> dict:
    return {"object": "fine_tuning.job.event", "seq": event.seq, "kind": event.kind, "data": event.data,
            "created_at": unix(event.created_at)}


def artifact_json(artifact, *, request) -> dict:
    content = reverse("api-artifact-content", args=[artifact.pk])
    web = reverse("artifact-download", args=[artifact.pk])
    return {
        "id": artifact.pk,
        "object": "artifact",
        "kind": artifact.kind,
        "name": artifact.name,
        "job": artifact.job_id,
        "metadata": artifact.metadata,
        "created_at": unix(artifact.created_at),
        # The same zip stream either way: the first URL takes the API token,
        # the second is the web page's link and needs a browser session.
        "download_url": request.build_absolute_uri(content),
        "web_download_url": request.build_absolute_uri(web),
        "publications": [{"repo_id": p.repo_id, "branch": p.branch, "private": p.private, "commit": p.commit_sha,
                          "commit_url": p.commit_url, "url": p.repo_url, "job": p.job_id,
                          "published_at": unix(p.published_at)} for p in artifact.publications.all()],
    }


def dataset_json(dataset) -> dict:
    return {
        "id": dataset.pk,
        "object": "dataset",
        "name": dataset.name,
        "team": dataset.team.slug,
        "format": dataset.format,
        "schema": dataset.schema,
        "tasks": dataset.tasks,
        "labels": dataset.labels,
        "columns": dataset.columns,
        "row_count": dataset.row_count,
        "size_bytes": dataset.size_bytes,
        "sha256": dataset.sha256,
        # An upload whose columns could not be told apart for sure waits for
        # the user to confirm the mapping on its web page; only a confirmed
        # version can be trained on (and versions derived from it get new ids).
        "confirmed": dataset.confirmed,
        "schema_confidence": dataset.schema_confidence,
        "column_mapping": dataset.column_mapping,
        "version": dataset.version,
        "operation": dataset.operation,
        "root": dataset.root_id,
        "created_at": unix(dataset.created_at),
        "web_url": dataset.get_absolute_url(),
    }


def base_model_json(base_model) -> dict:
    return {"id": base_model.pk, "object": "model", "name": base_model.name, "source": base_model.source,
            "upstream_id": base_model.upstream_id or None, "created_at": unix(base_model.created_at)}


def page_json(items: list[dict], *, has_more: bool) -> dict:
    return {"object": "list", "data": items, "has_more": has_more}


def operation_json(run) -> dict:
    """A dataset operation (a diet step or a mapping): its job, and once it
    succeeded the versions it made."""
    return {"object": "dataset.operation", "id": run.pk, "dataset": run.dataset_id, "operation": run.operation,
            "parameters": run.parameters, "job": run.job_id, "status": job_api_status(run.job),
            "error": run.message or None, "results": [version.pk for version in run.results.all()],
            "created_at": unix(run.created_at)}


def analysis_json(run) -> dict:
    """A dataset analysis: token statistics, lint findings and the rendered first rows, once its job is done."""
    return {"object": "dataset.analysis", "id": run.pk, "dataset": run.dataset_id, "job": run.job_id,
            "status": job_api_status(run.job), "error": run.message or None, "base_model": run.base_model_id,
            "max_length": run.max_length, "loss_on_prompt": run.loss_on_prompt, "chat_template": run.chat_template,
            "template_in_effect": run.template_in_effect, "stats": run.stats, "findings": run.findings,
            "preview": run.preview, "notice": run.notice, "created_at": unix(run.created_at)}
