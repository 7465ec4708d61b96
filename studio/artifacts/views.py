import csv
from pathlib import Path

from django.http import FileResponse, Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils.text import slugify

from studio.audit.services import audit_record
from studio.artifacts.selectors import (artifact_evaluations, artifact_files, artifact_get_for_user,
                                       artifact_lineage, artifact_list_for_user, report_rows)
from studio.artifacts.views_publish import publish_context
from studio.datasets.selectors import dataset_list_for_user
from studio.jobs.selectors_judge import artifact_forgetting_checks, artifact_judgements
from studio.artifacts.zipstream import zip_directory
from studio.jobs.selectors_scores import CSV_COLUMNS, export_rows


def artifact_list(request):
    artifacts = artifact_list_for_user(user=request.user).select_related("job", "base_model")[:300]
    return render(request, "artifacts/list.html", {"artifacts": artifacts})


def artifact_detail(request, artifact_id: int):
    artifact = artifact_get_for_user(user=request.user, artifact_id=artifact_id)
    return render(request, "artifacts/detail.html", {
        "artifact": artifact, "lineage": artifact_lineage(artifact), "files": artifact_files(artifact),
        "children": artifact.children.all(), "report": report_rows(artifact.metadata.get("report")),
        "evaluations": artifact_evaluations(artifact), "judgements": artifact_judgements(artifact),
        "forgetting_checks": artifact_forgetting_checks(artifact),
        "harness_datasets": dataset_list_for_user(user=request.user).filter(team_id=artifact.team_id),
        **publish_context(request, artifact)})


def artifact_scores(request, artifact_id: int, fmt: str):
    """Every evaluation of the artifact, the studio's scores and the harness's
    (artifact and base, with standard errors), as JSON or CSV."""
    if fmt not in ("json", "csv"):
        raise Http404("Scores download as .json or .csv")
    artifact = artifact_get_for_user(user=request.user, artifact_id=artifact_id)
    evaluations = [e for e in artifact_evaluations(artifact) if e["job"].status == "succeeded"]
    stem = f"{slugify(artifact.name) or 'artifact'}-{artifact.pk}-scores"
    if fmt == "csv":
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        writer = csv.DictWriter(response, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(export_rows(evaluations))
    else:
        response = JsonResponse({"artifact": {"id": artifact.pk, "name": artifact.name, "kind": artifact.kind,
                                              "base_model": str(artifact.base_model or "")},
                                 "evaluations": [{"job": e["job"].pk, "dataset": str(e["job"].dataset or ""),
                                                  "finished_at": e["job"].finished_at,
                                                  # the settings, less the server's file paths
                                                  "settings": {k: v for k, v in e["job"].config.items()
                                                               if not k.endswith("_path") and k != "base_model"},
                                                  "scores": e["scores"], "harness": e["harness"]}
                                                 for e in evaluations]})
    response["Content-Disposition"] = f'attachment; filename="{stem}.{fmt}"'
    return response


def _directory(artifact) -> Path:
    directory = Path(artifact.path)
    if not directory.is_dir():
        raise Http404("The files of this artifact are gone from the server.")
    return directory


def artifact_download(request, artifact_id: int):
    """The whole directory as a zip, streamed as it is written (never built in memory)."""
    artifact = artifact_get_for_user(user=request.user, artifact_id=artifact_id)
    directory = _directory(artifact)
    audit_record(user=request.user, team=artifact.team, action="artifact.downloaded", target=artifact,
                 detail={"file": "(zip)"}, request=request)
    stem = f"{slugify(artifact.job.name) or 'job'}-{artifact.job_id}-{artifact.kind}"
    response = StreamingHttpResponse(zip_directory(directory, prefix=stem), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{stem}.zip"'
    return response


def artifact_file(request, artifact_id: int, name: str):
    """One file of the artifact (a .gguf to hand to llama.cpp, a model card)."""
    artifact = artifact_get_for_user(user=request.user, artifact_id=artifact_id)
    directory = _directory(artifact).resolve()
    path = (directory / name).resolve()
    if not path.is_relative_to(directory) or not path.is_file():
        raise Http404("No such file in this artifact.")
    audit_record(user=request.user, team=artifact.team, action="artifact.downloaded", target=artifact,
                 detail={"file": name}, request=request)
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name)


def playground(request):
    """Chat with an artifact, or two side by side; replies stream over /ws/playground/."""
    artifacts = artifact_list_for_user(user=request.user).select_related("base_model")[:300]
    chosen = request.GET.get("artifact", "")
    return render(request, "artifacts/playground.html", {"artifacts": artifacts, "chosen": chosen})
