from dataclasses import dataclass
from pathlib import Path

from django.shortcuts import get_object_or_404

from studio.accounts.selectors import team_ids_for_user
from studio.artifacts.models import Artifact
from studio.jobs.models import Job
from studio.jobs.selectors_scores import harness_table, job_scores


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
    found = job_scores(jobs)
    return [{"job": job, **found[job.pk], "table": harness_table(found[job.pk]["harness"])} for job in jobs]


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
        if f"{key}_before" in report:  # a part the job switched off is not in the report
            rows.append({"label": label, "before": report[f"{key}_before"], "after": report.get(f"{key}_after")})
    if "agreement_top1" in report:
        rows.append({"label": "Next-token agreement with the source", "before": "100%",
                     "after": f"{report['agreement_top1']:.1%} (KL {report['agreement_kl']:.4f})"})
    return {"rows": rows, "answers": report.get("answers", []), "ratio": report.get("size_ratio"),
            "eval_rows": report.get("eval_rows"), "measured_by": report.get("measured_by", ""),
            "alpha_search": _alpha_search((report.get("compression") or {}).get("alpha_search"))}


def _alpha_search(search: dict | None) -> dict | None:
    """ComPEFT's α search as rows (α, validation loss, chosen?)."""
    if not search:
        return None
    return {**search, "candidates": [{"alpha": alpha, "loss": loss, "chosen": alpha == search["chosen"]}
                                     for alpha, loss in zip(search["grid"], search["losses"])]}


def artifact_card_facts(artifact: Artifact) -> dict:
    """What the card of a published artifact says beyond its own README
    (tuning.hub_card.CardFacts as a dict, stored with the publish job): the base
    model's hub id, licence and gating, how the artifact relates to it, the data,
    the evaluation scores and the lineage."""
    base, job = artifact.base_model, artifact.job
    if artifact.is_adapter:
        relation = "adapter"
    elif job.kind == Job.Kind.QUANTIZE:
        relation = "quantized"
    elif job.kind == Job.Kind.MERGE and job.config.get("method") != "fold":
        relation = "merge"
    else:
        relation = "finetune"
    evaluations = [{"dataset": str(e["job"].dataset or ""), "job": e["job"].pk, **e["scores"]}
                   for e in artifact_evaluations(artifact) if e["scores"]]
    lineage = [f"{step.artifact.name}: {step.artifact.kind}, {step.artifact.job.kind} job #{step.artifact.job_id}"
               + "".join(f", {key} {step.artifact.metadata[key]}" for key in ("method", "scheme")
                         if step.artifact.metadata.get(key))
               + (f", data sha256 {step.artifact.dataset_sha256[:12]}" if step.artifact.dataset_sha256 else "")
               for step in artifact_lineage(artifact)]
    return {"title": artifact.name, "kind": artifact.kind, "format": artifact.format,
            "base_model": base.upstream_id if base else "", "relation": relation,
            "license": (base.info or {}).get("license", "") if base else "", "gated": bool(base and base.gated),
            "pipeline_tag": "text-classification" if job.config.get("task") == "classify" else "text-generation",
            "datasets": [{"name": str(job.dataset or job.config.get("dataset_name") or ""),
                          "sha256": artifact.dataset_sha256}] if artifact.dataset_sha256 else [],
            "evaluations": evaluations, "lineage": lineage}


def artifact_publishing(artifact: Artifact) -> dict:
    """Where the artifact was published (newest first), and its publish jobs
    not succeeded: running ones show progress, failed or cancelled ones a retry."""
    jobs = [job for job in Job.objects.filter(team_id=artifact.team_id, kind="publish").order_by("-created_at")[:50]
            if job.config.get("artifact_id") == artifact.pk and job.status != Job.Status.SUCCEEDED]
    return {"publications": list(artifact.publications.select_related("published_by")),
            "running": [job for job in jobs if not job.is_finished],
            "ended": [job for job in jobs if job.is_finished][:5]}
