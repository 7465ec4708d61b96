from dataclasses import dataclass
from pathlib import Path

from django.shortcuts import get_object_or_404

from studio.accounts.selectors import team_ids_for_user
from studio.artifacts.models import Artifact
from studio.jobs.models import Job, JobEvent


def artifact_list_for_user(*, user):
    return Artifact.objects.filter(team_id__in=team_ids_for_user(user=user)).select_related("job")


def artifact_get_for_user(*, user, artifact_id: int) -> Artifact:
    return get_object_or_404(artifact_list_for_user(user=user), pk=artifact_id)


@dataclass(frozen=True)
class LineageStep:
    artifact: Artifact
    depth: int  # 0 for the artifact itself, 1 for its parents, ...


def artifact_lineage(artifact: Artifact, *, max_depth: int = 8) -> list[LineageStep]:
    """The artifact and its ancestors, breadth first (parents are in the same
    team by construction; ``max_depth`` guards against a cycle in bad data)."""
    steps, seen, frontier = [], {artifact.pk}, [artifact]
    for depth in range(max_depth):
        steps.extend(LineageStep(a, depth) for a in frontier)
        parents = Artifact.objects.filter(children__in=frontier).select_related("job", "base_model").distinct()
        frontier = [p for p in parents if p.pk not in seen]
        seen.update(p.pk for p in frontier)
        if not frontier:
            break
    return steps


@dataclass(frozen=True)
class ArtifactFile:
    name: str  # relative to the artifact directory
    size_bytes: int


def artifact_files(artifact: Artifact) -> list[ArtifactFile]:
    directory = Path(artifact.path)
    if not directory.is_dir():
        return []
    return [ArtifactFile(str(f.relative_to(directory)), f.stat().st_size)
            for f in sorted(directory.rglob("*")) if f.is_file()]


def artifact_evaluations(artifact: Artifact) -> list[dict]:
    """Finished evaluate jobs of this artifact, newest first, with their scores."""
    jobs = [job for job in Job.objects.filter(team_id=artifact.team_id, kind=Job.Kind.EVALUATE)
            .select_related("dataset").order_by("-created_at")[:200]
            if artifact.pk in job.input_artifact_ids]  # a JSON list: filtered here, SQLite has no "contains"
    scores = {e.job_id: e.data for e in JobEvent.objects.filter(job__in=jobs, kind="eval")}
    return [{"job": job, "scores": scores.get(job.pk)} for job in jobs]


def report_rows(report: dict | None) -> dict | None:
    """A quantization report (tuning.quantize.report) as rows for the
    before/after table, sizes in MiB."""
    if not report:
        return None
    mib = lambda n: None if n is None else f"{n / 2**20:,.1f} MiB"  # noqa: E731
    rows = [{"label": "Weights on disk", "before": mib(report.get("size_bytes_before")),
             "after": mib(report.get("size_bytes_after"))}]
    for key, label in (("perplexity", "Perplexity"), ("eval_loss", "Eval loss"),
                       ("tokens_per_s", "Generation speed (tokens/s)")):
        rows.append({"label": label, "before": report.get(f"{key}_before"), "after": report.get(f"{key}_after")})
    return {"rows": rows, "answers": report.get("answers", []), "ratio": report.get("size_ratio"),
            "eval_rows": report.get("eval_rows")}
