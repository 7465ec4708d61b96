"""Reads of judged comparisons and forgetting checks: a job's result, an artifact's comparisons and checks,
and the rows of the CSV export."""

from __future__ import annotations

from studio.jobs.models import Job, JobEvent

RECENT = 200  # jobs of a kind looked through for one artifact's (the artifact ids are in a JSON field)


def job_result(job: Job, kind: str) -> dict | None:
    """The newest current event of ``kind`` ("judged", "forgetting") the job reported."""
    event = (JobEvent.objects.filter(job=job, kind=kind, superseded=False).order_by("-seq").first())
    return event.data if event else None


def _studio_part(job: Job) -> dict:
    return (job.config or {}).get("studio") or {}


def artifact_judgements(artifact) -> list[dict]:
    """Judged comparisons in which the artifact is model A or B, newest first, with their summaries."""
    jobs = [job for job in Job.objects.filter(team_id=artifact.team_id, kind="judge").order_by("-created_at")[:RECENT]
            if artifact.pk in (_studio_part(job).get("artifact_a"), _studio_part(job).get("artifact_b"))]
    results = {e.job_id: e.data for e in JobEvent.objects.filter(job__in=jobs, kind="judged", superseded=False)}
    return [{"job": job, "summary": (results.get(job.pk) or {}).get("summary"),
             "label_a": job.config.get("label_a"), "label_b": job.config.get("label_b")} for job in jobs]


def artifact_forgetting_checks(artifact) -> list[dict]:
    """Forgetting checks of the artifact (queued with it, or chained after the run that made it), newest first."""
    jobs = [job for job in Job.objects.filter(team_id=artifact.team_id, kind="forgetting")
            .order_by("-created_at")[:RECENT]
            if artifact.pk in job.input_artifact_ids]
    results = {e.job_id: e.data for e in JobEvent.objects.filter(job__in=jobs, kind="forgetting", superseded=False)}
    return [{"job": job, "result": results.get(job.pk)} for job in jobs]


CSV_COLUMNS = ("prompt", "answer_a", "answer_b", "verdict_a_first", "verdict_b_first", "outcome",
               "reply_a_first", "reply_b_first")


def judged_csv_rows(result: dict) -> list[list[str]]:
    """Every judged pair as a CSV row, after a header; the outcome names the winning model's label."""
    names = {"a": result.get("label_a", "A"), "b": result.get("label_b", "B"), "tie": "tie"}
    rows = [list(CSV_COLUMNS)]
    for pair in result.get("pairs", []):
        rows.append([names.get(pair.get(c), pair.get(c)) if c == "outcome" else str(pair.get(c) or "")
                     for c in CSV_COLUMNS])
    return rows
