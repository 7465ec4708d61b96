"""What a merge search's page shows (studio/jobs/services_search.py writes it): every candidate with its
recipe, its jobs and its score, and the best one with the model it kept."""

from __future__ import annotations

from studio.artifacts.models import Artifact
from studio.jobs.models import Job, MergeSearchCandidate
from tuning.merge_search import METRICS, best


def merge_search_result(job: Job) -> dict:
    rows = list(MergeSearchCandidate.objects.filter(search=job).select_related("merge_job", "evaluate_job"))
    metric = job.config.get("metric", "eval_loss")
    leader = best([row.score for row in rows], metric)
    winner = rows[leader] if leader is not None else None
    kept = None
    if winner is not None and job.status == Job.Status.SUCCEEDED and winner.merge_job_id:
        kept = Artifact.objects.filter(job_id=winner.merge_job_id).first()
    return {"metric": metric, "lower_is_better": METRICS.get(metric) == "min", "rows": rows,
            "names": list(rows[0].coefficients) if rows else sorted(job.config.get("search", {})),
            "best": winner, "kept": kept, "budget": job.config.get("budget", 0)}
