"""Evaluation scores as tables and exports: the studio's own scores (an
evaluate job's ``eval`` event) and lm-evaluation-harness results (its
``harness`` event, one row per task and side, tuning.harness), read for the
artifact page, the compare page and the JSON/CSV downloads."""

from __future__ import annotations

from studio.jobs.models import Job, JobEvent

# The studio's own scores, in the order the artifact page shows them.
STUDIO_SCORES = ("eval_loss", "perplexity", "exact_match", "rouge_l", "accuracy", "f1", "reward_margin", "rows")
CSV_COLUMNS = ("job", "dataset", "finished_at", "source", "task", "metric", "side", "value", "stderr", "n")


def harness_table(results: list[dict]) -> list[dict]:
    """One row per task and metric: the artifact's value and the base's, each
    with its standard error, and the difference (artifact - base)."""
    rows: dict[tuple[str, str], dict] = {}
    for result in results or []:
        for metric, value in result["metrics"].items():
            row = rows.setdefault((result["task"], metric), {"task": result["task"], "metric": metric, "n": None})
            row[result["side"]] = value
            row[f"{result['side']}_stderr"] = result.get("stderr", {}).get(metric)
            row["n"] = row["n"] or result.get("n")
    for row in rows.values():
        if row.get("artifact") is not None and row.get("base") is not None:
            row["delta"] = round(row["artifact"] - row["base"], 6)
    return list(rows.values())


def job_scores(jobs: list[Job]) -> dict[int, dict]:
    """{job id: {"scores": the eval event's data or None, "harness": harness results or None}}."""
    found = {job.pk: {"scores": None, "harness": None} for job in jobs}
    for event in JobEvent.objects.filter(job__in=jobs, kind__in=["eval", "harness"], superseded=False):
        found[event.job_id]["scores" if event.kind == "eval" else "harness"] = \
            event.data if event.kind == "eval" else event.data.get("results")
    return found


def harness_for_compared(jobs: list[Job]) -> list[dict]:
    """For each compared job, the harness table it shows: an evaluate job's
    own, or for a job that made artifacts, that of the newest harness run on
    one of them. [{"job", "evaluation" (the evaluate job or None), "table"}]."""
    evaluations = list(Job.objects.filter(team_id__in={job.team_id for job in jobs}, kind=Job.Kind.EVALUATE,
                                          status=Job.Status.SUCCEEDED).order_by("-finished_at")[:500])
    scores = job_scores([*evaluations, *(job for job in jobs if job.kind == Job.Kind.EVALUATE)])
    out = []
    for job in jobs:
        if job.kind == Job.Kind.EVALUATE:
            found = job if scores.get(job.pk, {}).get("harness") else None
        else:
            made = set(job.artifacts.values_list("pk", flat=True))
            found = next((e for e in evaluations if scores[e.pk]["harness"] and made & set(e.input_artifact_ids)),
                         None)
        out.append({"job": job, "evaluation": found,
                    "table": harness_table(scores[found.pk]["harness"]) if found else []})
    return out


def compare_harness_rows(compared: list[dict]) -> list[dict]:
    """The compare page's table: one row per (task, metric), the base's value
    (from the first run that scored it) and each compared job's cell."""
    keys: dict[tuple[str, str], dict] = {}
    for column, entry in enumerate(compared):
        for row in entry["table"]:
            line = keys.setdefault((row["task"], row["metric"]),
                                   {"task": row["task"], "metric": row["metric"], "base": None,
                                    "base_stderr": None, "cells": [None] * len(compared)})
            if line["base"] is None and row.get("base") is not None:
                line["base"], line["base_stderr"] = row["base"], row.get("base_stderr")
            line["cells"][column] = {"value": row.get("artifact"), "stderr": row.get("artifact_stderr"),
                                     "delta": row.get("delta")}
    return list(keys.values())


def export_rows(evaluations: list[dict]) -> list[dict]:
    """Every score of the evaluations (``artifact_evaluations``' entries) as flat rows for a CSV."""
    rows = []
    for entry in evaluations:
        job = entry["job"]
        common = {"job": job.pk, "dataset": str(job.dataset or ""),
                  "finished_at": job.finished_at.isoformat() if job.finished_at else ""}
        for metric in STUDIO_SCORES:
            value = (entry.get("scores") or {}).get(metric)
            if value is not None:
                rows.append({**common, "source": "studio", "task": job.config.get("task", ""), "metric": metric,
                             "side": "artifact", "value": value, "stderr": "", "n": ""})
        for result in entry.get("harness") or []:
            for metric, value in result["metrics"].items():
                rows.append({**common, "source": "lm-evaluation-harness", "task": result["task"], "metric": metric,
                             "side": result["side"], "value": value,
                             "stderr": result.get("stderr", {}).get(metric, ""), "n": result.get("n") or ""})
    return rows
