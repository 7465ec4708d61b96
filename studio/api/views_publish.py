"""/api/v1/artifacts/{id}/publish: publish an artifact to the Hub (a publish
job, as the artifact page's form queues it)."""

from __future__ import annotations

from studio.api.auth import api_view
from studio.api.bodies import json_body
from studio.api.errors import ApiError
from studio.api.selectors import artifact_get_in_teams
from studio.api.serializers import job_json
from studio.artifacts.services_publish import artifact_publish_request
from studio.audit.services import audit_record
from tuning.errors import ConfigError

PUBLISH_FIELDS = {"repo_id": str, "branch": str, "private": bool, "commit_message": str, "token": str, "secret": int}


@api_view("POST")
def artifact_publish_api(request, artifact_id: int):
    """Queue a publish job; follow it at /fine_tuning/jobs/{id} and its events."""
    artifact = artifact_get_in_teams(team_ids=request.caller.team_ids, artifact_id=artifact_id)
    request.caller.require_writer(artifact.team_id, action="publish artifacts")
    body = json_body(request)
    if unknown := sorted(set(body) - set(PUBLISH_FIELDS)):
        raise ApiError(400, f"Unknown fields {unknown}; known: {sorted(PUBLISH_FIELDS)}", field=unknown[0])
    for name, kind in PUBLISH_FIELDS.items():
        if name in body and body[name] is not None and (not isinstance(body[name], kind)
                                                        or kind is int and isinstance(body[name], bool)):
            raise ApiError(400, f"{name} must be {'true or false' if kind is bool else 'a ' + kind.__name__}",
                           field=name)
    if not body.get("repo_id"):
        raise ApiError(400, "repo_id is required (owner/name)", field="repo_id")
    try:
        job = artifact_publish_request(
            user=request.caller.user, artifact=artifact, repo_id=body["repo_id"], branch=body.get("branch") or "main",
            private=body.get("private", True), commit_message=body.get("commit_message") or "",
            token=body.get("token") or "", secret_id=body.get("secret"))
    except ConfigError as exc:
        field, message = next(iter(exc.errors.items()))
        raise ApiError(400, message, field={"secret": "secret"}.get(field, field)) from None
    audit_record(user=request.caller.user, team=artifact.team, action="job.started", target=job,
                 detail={"kind": job.kind, "repo_id": job.config["repo_id"], "via": "api"}, request=request)
    return {**job_json(job, request=request), "_status": 201}
