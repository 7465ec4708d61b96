"""/api/v1: artifacts, base models, datasets, the OpenAPI schema."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.template.defaultfilters import filesizeformat
from django.views.decorators.csrf import csrf_exempt

from studio.audit.services import audit_record
from studio.api.auth import api_view
from studio.api.deletes import delete_json
from studio.api.errors import ApiError, error_response
from studio.api.openapi import openapi_schema
from studio.api.selectors import (artifact_get_in_teams, artifact_list_in_team, dataset_get_in_teams,
                                  dataset_list_in_team, int_param, page_newest_first)
from studio.api.serializers import artifact_json, base_model_json, dataset_json, page_json
from studio.artifacts.views import artifact_download, artifact_scores
from studio.catalog.selectors import base_model_list
from studio.datasets.forms import MAX_FILES
from studio.datasets.services import dataset_create_from_uploads
from tuning.errors import DatasetError


@api_view("GET")
def artifacts_collection(request):
    """The team's artifacts newest first; ``job`` filters by job."""
    team = request.caller.team(request.GET.get("team"))
    artifacts = artifact_list_in_team(team_id=team.pk)
    job_id = int_param(request.GET, "job", default=None, minimum=1)
    if job_id is not None:
        artifacts = artifacts.filter(job_id=job_id)
    rows, has_more = page_newest_first(artifacts, request.GET)
    return page_json([artifact_json(artifact, request=request) for artifact in rows], has_more=has_more)


@api_view("GET", "DELETE")
def artifact_retrieve(request, artifact_id: int):
    artifact = artifact_get_in_teams(team_ids=request.caller.team_ids, artifact_id=artifact_id)
    if request.method == "DELETE":
        return delete_json(request, artifact)
    return artifact_json(artifact, request=request)


@api_view("GET")
def artifact_content(request, artifact_id: int):
    """The artifact's files as a zip, streamed by the web page's own view
    (the team check here also honours a token tied to one team)."""
    artifact = artifact_get_in_teams(team_ids=request.caller.team_ids, artifact_id=artifact_id)
    return artifact_download(request, artifact.pk)


@api_view("GET")
def artifact_scores_api(request, artifact_id: int):
    """Every evaluation of the artifact (studio and harness scores, artifact and base) as JSON, or CSV with
    ?format=csv: the artifact page's downloads, behind the API token's team check."""
    artifact = artifact_get_in_teams(team_ids=request.caller.team_ids, artifact_id=artifact_id)
    fmt = request.GET.get("format", "json")
    if fmt not in ("json", "csv"):
        raise ApiError(400, "format: json or csv", field="format")
    return artifact_scores(request, artifact.pk, fmt)


@api_view("GET")
def models_collection(request):
    """Base models every team shares, and those the caller's teams added."""
    return page_json([base_model_json(model) for model in base_model_list(team_ids=request.caller.team_ids)],
                     has_more=False)


def _dataset_upload(request):
    # ``team`` is read from the query string first, so that the role is
    # checked before a large multipart body is parsed.
    requested = request.GET.get("team") or request.POST.get("team")
    team = request.caller.team(requested)
    request.caller.require_writer(team.pk, action="upload datasets")
    uploads = request.FILES.getlist("file")
    if getattr(request, "upload_too_large", False):
        raise ApiError(413, f"The file is larger than the {filesizeformat(settings.UPLOAD_MAX_BYTES)} upload "
                            f"limit; split it or upload a sample", field="file")
    if not uploads:
        raise ApiError(400, "Send the data as multipart/form-data with a 'file' part (several make one dataset)",
                       field="file")
    if len(uploads) > MAX_FILES:
        raise ApiError(400, f"At most {MAX_FILES} files make one dataset", field="file")
    name = request.POST.get("name", "")
    try:
        dataset = dataset_create_from_uploads(team=team, user=request.caller.user, uploads=uploads, name=name[:200])
    except DatasetError as exc:
        raise ApiError(400, str(exc), field="file", row=exc.row, column=exc.field or None) from None
    audit_record(user=request.caller.user, team=team, action="dataset.uploaded", target=dataset,
                 detail={"rows": dataset.row_count, "via": "api"}, request=request)
    return {**dataset_json(dataset), "_status": 201}


@api_view("GET", "POST")
def datasets_collection(request):
    if request.method == "POST":
        return _dataset_upload(request)
    team = request.caller.team(request.GET.get("team"))
    rows, has_more = page_newest_first(dataset_list_in_team(team_id=team.pk), request.GET)
    return page_json([dataset_json(dataset) for dataset in rows], has_more=has_more)


@api_view("GET", "DELETE")
def dataset_retrieve(request, dataset_id: int):
    dataset = dataset_get_in_teams(team_ids=request.caller.team_ids, dataset_id=dataset_id)
    if request.method == "DELETE":
        return delete_json(request, dataset)
    return dataset_json(dataset)


@api_view("GET")
def openapi_json(request):
    return openapi_schema(server_url=request.build_absolute_uri("/api/v1"))


@login_not_required
@csrf_exempt
def api_not_found(request, rest: str = ""):
    """Unknown paths under /api/v1/ answer JSON too (and say nothing more)."""
    hint = " (API paths have no trailing slash)" if request.path.endswith("/") and len(request.path) > 8 else ""
    return error_response(404, f"No API endpoint {request.path[:200]}{hint}; see /api/v1/openapi.json")
