"""The OpenAPI 3.1 description of /api/v1, written as a dict and served as
JSON (no schema-generator dependency). Keep it beside urls.py: a test fails
when a URL pattern is missing here."""

from __future__ import annotations

from studio.api.models import WEBHOOK_EVENT_TYPES
from studio.api.openapi_openai import openai_paths
from studio.api.openapi_parts import answer as _json, id_param as _id_param, list_of as _list_of, op as _op
from studio.api.openapi_parts import param as _param, ref as _ref  # the names this file was written with
from studio.api.openapi_judge import judge_paths
from studio.api.openapi_steps import SCHEMAS as STEP_SCHEMAS, steps_paths
from studio.artifacts.models import Artifact
from studio.jobs.kinds import JOB_KINDS
from studio.jobs.models import Job

# "cancelling" and "preempting" are reported as "running" (serializers.job_api_status).
STATUSES = [status for status in Job.Status.values if status not in (Job.Status.CANCELLING, Job.Status.PREEMPTING)]


TEAM = _param("team", "query", {"type": "string"},
              "Team id or slug; default: the token's team, else your first team.")
LIMIT = _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
               "Page size.")
AFTER_ID = _param("after", "query", {"type": "integer"},
                  "Cursor: the last id of the previous page (lists are newest first).")


JOB = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"}, "object": {"const": "fine_tuning.job"}, "name": {"type": "string"},
        "kind": {"enum": list(JOB_KINDS)}, "team": {"type": "string"},
        "owner": {"type": ["string", "null"]}, "model": {"type": ["integer", "null"], "description": "Base model id."},
        "training_file": {"type": ["integer", "null"], "description": "Dataset id."},
        "method": {"type": "object", "properties": {"type": {"type": "string"}, "params": {"type": "object"}}},
        "hyperparameters": {"type": "object", "description": "The validated training settings."},
        "status": {"enum": STATUSES, "description": (
            "A running job asked to stop reports 'running' with cancel_requested true until it stops "
            "(within one step; its last checkpoint is kept), then 'cancelled'.")},
        "cancel_requested": {"type": "boolean"},
        "error": {"oneOf": [{"type": "null"}, {"type": "object", "properties": {
            "kind": {"enum": ["user_error", "error"], "description": (
                "user_error: fix the settings or data; error: an internal problem.")},
            "message": {"type": "string"}}}]},
        "progress": {"type": "object", "properties": {"step": {"type": "integer"}, "total_steps": {"type": "integer"},
                                                      "loss": {"type": ["number", "null"]}}},
        "last_event_seq": {"type": "integer"},
        "devices": {"type": "integer", "description": "Devices the job trains on together (1 … the pool's)."},
        "holds": {"type": "array", "description": (
            "While it runs: the workers it runs on and how many of their devices, the claiming worker first "
            "(several when the job asked for more devices than one worker has)."),
                  "items": {"type": "object", "properties": {"worker": {"type": "string"},
                                                             "devices": {"type": "integer"},
                                                             "role": {"enum": ["head", "follower"]}}}},
        "artifacts": {"type": "array", "items": {"type": "integer"}},
        "created_at": {"type": "integer", "description": "Unix seconds."},
        "started_at": {"type": ["integer", "null"]}, "finished_at": {"type": ["integer", "null"]},
        "web_url": {"type": "string", "format": "uri"},
    },
}

JOB_CREATE = {
    "type": "object", "required": ["model", "training_file"], "additionalProperties": False,
    "properties": {
        "model": {"type": "integer", "description": "Base model id (GET /models)."},
        "training_file": {"type": "integer", "description": "Dataset id of the same team (GET /datasets)."},
        "method": {"oneOf": [{"type": "string"}, {"type": "object", "required": ["type"], "properties": {
            "type": {"type": "string", "description": "lora, qlora, dora, full …", "default": "lora"},
            "params": {"type": "object", "description": "The method's parameters (rank, alpha …)."}}}]},
        "hyperparameters": {"type": "object", "description": (
            "Training settings (learning_rate, max_steps, epochs, batch_size, task, optimizer (adamw, galore, "
            "galore_8bit) with galore_rank, galore_update_every, galore_scale …; for task preference "
            "also preference_loss, beta, label_smoothing, simpo_gamma, cpo_alpha, desirable_weight, "
            "undesirable_weight, reference; for task reward, reward_centering; for task grpo, policy_loss, group_size, "
            "max_completion_length, temperature, kl_beta, reward_exact_match, answer_pattern, reward_format, "
            "format_pattern, reward_length, length_min, length_max, reward_model_weight and reward_model, "
            "a reward job's artifact id); unknown or "
            "invalid ones answer 400 listing every bad field.")},
        "name": {"type": "string"}, "team": {"type": "string"},
    },
}

EVENT = {"type": "object", "properties": {
    "object": {"const": "fine_tuning.job.event"}, "seq": {"type": "integer"},
    "kind": {"type": "string", "description": "log, metrics, eval, checkpoint, artifact, status, progress"},
    "data": {"type": "object"}, "created_at": {"type": "integer"}}}

CHECKPOINT = {"type": "object", "properties": {
    "object": {"const": "fine_tuning.job.checkpoint"}, "id": {"type": "integer", "description": "The event's seq."},
    "job": {"type": "integer"}, "step": {"type": "integer"}, "path": {"type": "string"},
    "metrics": {"type": "object", "properties": {
        name: {"type": ["number", "null"]} for name in ("train_loss", "eval_loss", "perplexity", "accuracy", "f1")}},
    "created_at": {"type": "integer"}}}

ARTIFACT = {"type": "object", "properties": {
    "id": {"type": "integer"}, "object": {"const": "artifact"}, "kind": {"enum": list(Artifact.Kind.values)},
    "name": {"type": "string"}, "job": {"type": "integer"}, "metadata": {"type": "object"},
    "created_at": {"type": "integer"},
    "download_url": {"type": "string", "format": "uri", "description": "A zip stream; takes the API token."},
    "web_download_url": {"type": "string", "format": "uri", "description": "The web page's link (session login)."},
    "publications": {"type": "array", "description": "Commits publish jobs made to a hub, newest first.",
                     "items": {"type": "object", "properties": {
                         "repo_id": {"type": "string"}, "branch": {"type": "string"}, "private": {"type": "boolean"},
                         "commit": {"type": "string"}, "commit_url": {"type": "string"}, "url": {"type": "string"},
                         "job": {"type": "integer"}, "published_at": {"type": "integer"}}}}}}

PUBLISH = {"type": "object", "required": ["repo_id"], "additionalProperties": False, "properties": {
    "repo_id": {"type": "string", "description": "owner/name (a user or organisation), or a name under the "
                                                 "token's user; an existing repo gets a new commit."},
    "branch": {"type": "string", "default": "main", "description": "A new branch starts from main's head."},
    "private": {"type": "boolean", "default": True, "description": "For a repo the job creates."},
    "commit_message": {"type": "string"},
    "token": {"type": "string", "description": "A hub token with write access, kept as a team secret."},
    "secret": {"type": "integer", "description": "Or the id of a token the team saved."}}}

DATASET = {"type": "object", "properties": {
    "id": {"type": "integer"}, "object": {"const": "dataset"}, "name": {"type": "string"}, "team": {"type": "string"},
    "format": {"type": "string"}, "schema": {"type": "string"}, "tasks": {"type": "array", "items": {"type": "string"}},
    "labels": {"type": "array"}, "columns": {"type": "array"}, "row_count": {"type": "integer"},
    "size_bytes": {"type": "integer"}, "sha256": {"type": "string"},
    "confirmed": {"type": "boolean", "description": (
        "False while an unsure column mapping awaits confirmation on the dataset's web page (web_url); "
        "only confirmed versions can be trained on.")},
    "schema_confidence": {"enum": ["sure", "unsure"]}, "column_mapping": {"type": "object"},
    "version": {"type": "integer"}, "operation": {"type": "string"}, "root": {"type": ["integer", "null"]},
    "created_at": {"type": "integer"}, "web_url": {"type": "string"}}}

MODEL = {"type": "object", "properties": {
    "id": {"type": "integer"}, "object": {"const": "model"}, "name": {"type": "string"},
    "source": {"enum": ["bundled", "local", "hub"]}, "upstream_id": {"type": ["string", "null"]},
    "created_at": {"type": "integer"}}}

ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "field": {"type": ["string", "null"], "description": "The request field at fault."},
    "errors": {"type": "array", "description": "Every bad field, when there are several.", "items": {
        "type": "object", "properties": {"field": {"type": "string"}, "message": {"type": "string"}}}},
    "row": {"type": ["integer", "null"], "description": "Uploads: the bad row of the data file (1-based)."},
    "column": {"type": ["string", "null"], "description": "Uploads: the bad column."},
    "blocking": {"type": "array", "items": {"type": "string"},
                 "description": "Deletes: what depends on it, the jobs still running, or what you may not "
                                "delete."}}}}}

DELETION = {"type": "object", "properties": {
    "object": {"const": "deletion"}, "id": {"type": "integer"},
    "deleted": {"type": "array", "items": {"type": "string"}, "description": "Everything removed, the target first."},
    "bytes": {"type": "integer", "description": "Disk space freed when the files are purged."},
    "restorable_until": {"type": "string", "format": "date-time"}}}

TEAM_PATH = _param("team", "path", {"type": "string"}, "The team's slug or id (one of your teams; else 404).")
USER_ID = _param("user_id", "path", {"type": "integer"}, "The member's user id.")
MEMBER = {"type": "object", "properties": {
    "object": {"const": "member"}, "user_id": {"type": "integer"}, "username": {"type": "string"},
    "role": {"enum": ["viewer", "member", "admin"]}, "joined_at": {"type": "integer"}}}
INVITATION = {"type": "object", "properties": {
    "object": {"const": "invitation"}, "id": {"type": "integer"}, "role": {"type": "string"},
    "email": {"type": ["string", "null"]}, "expires_at": {"type": "integer"},
    "team": {"type": "string", "description": "The team's slug (listing your invitations)."},
    "url": {"type": "string", "description": "The join link; it is shown when the invitation is made, only then."}}}

UPLOAD = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "array", "items": {"type": "string", "contentMediaType": "application/octet-stream"},
                 "description": "One or more files (JSONL, JSON, CSV/TSV, Parquet, .txt or a .zip of those) "
                                "read as one dataset; repeat the part for several."},
        "name": {"type": "string"}, "team": {"type": "string"}}}}}}

WEBHOOK_DOC = f"""Team admins register webhook URLs on the web page Accounts → Webhooks.
When a job finishes the studio POSTs {{"id", "object": "event", "type", "created_at", "data": {{"job"}}}}
with type one of {", ".join(WEBHOOK_EVENT_TYPES)} and the header
`Studio-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
To verify: split the header on ",", recompute the HMAC over the raw body bytes prefixed by t and ".",
compare in constant time with v1, and refuse a t older than 5 minutes (replays). Dedupe on the payload's id.
Failed deliveries (no 2xx within 10 s) are retried a few times with back-off."""

DELETE_PARAMS = [_param("chain", "query", {"type": "boolean", "default": False},
                        "Also delete what depends on it (made from it or using it); without it such a delete "
                        "is refused with 409 and the list in error.blocking.")]


def _delete_op(operation_id: str, what: str, id_param: dict) -> dict:
    return _op(operation_id, f"Delete {what}", _json(_ref("Deletion"), "What was deleted, restorable until a time"),
               params=[id_param, *DELETE_PARAMS], errors=("401", "403", "404"),
               more={"409": _json(_ref("Error"), "Something depends on it, or a job in the chain has not ended")},
               description="Soft delete: gone from every page and list at once; the files stay until the "
                           "retention window ends, and the Storage page can restore it until then.")


def openapi_schema(*, server_url: str = "/api/v1") -> dict:
    job_id, artifact_id, dataset_id = _id_param("job_id"), _id_param("artifact_id"), _id_param("dataset_id")
    schema = {
        "openapi": "3.1.0",
        "info": {"title": "Tuning Studio API", "version": "1", "description": (
            "Fine-tuning jobs, their events, checkpoints and artifacts, datasets and base models. Send "
            "`Authorization: Bearer <token>` (tokens: the API tokens page). A logged-in browser may GET. Viewers "
            "read; members create and cancel their own jobs; admins cancel any job of the team. Errors are "
            "{\"error\": {\"message\", \"field\"}}.\n\n"
            "The OpenAI-compatible endpoint (the /v1/ paths, tagged OpenAI-compatible: point any OpenAI client's "
            "base_url at <studio>/v1) takes the same token and answers OpenAI's error shape "
            "{\"error\": {\"message\", \"type\", \"param\", \"code\"}}.\n\n" + WEBHOOK_DOC)},
        "servers": [{"url": server_url}],
        "security": [{"bearer": []}],
        "paths": {
            "/fine_tuning/jobs": {
                "get": _op("listJobs", "List the team's jobs, newest first", _json(_list_of("Job"), "A page of jobs"),
                           params=[TEAM, LIMIT, AFTER_ID], errors=("400", "401", "404")),
                "post": _op("createJob", "Create a training job (queued at once)", _json(_ref("Job"), "The job"),
                            ok_code="201", errors=("400", "401", "403", "404"),
                            body={"required": True, "content": {"application/json": {"schema": _ref("JobCreate")}}}),
            },
            "/fine_tuning/jobs/{job_id}": {"get": _op("retrieveJob", "A job", _json(_ref("Job"), "The job"),
                                                      params=[job_id]),
                                           "delete": _delete_op("deleteJob", "a job and its artifacts", job_id)},
            "/fine_tuning/jobs/{job_id}/cancel": {"post": _op(
                "cancelJob", "Cancel a job", _json(_ref("Job"), "The job, cancelled or stopping"), params=[job_id],
                errors=("401", "403", "404"), more={"409": _json(_ref("Error"), "The job had already finished")},
                description="Not started: cancelled at once. Running: stops after the current step.")},
            "/fine_tuning/jobs/{job_id}/events": {"get": _op(
                "listJobEvents", "The job's events, oldest first",
                _json({**_list_of("Event"), "properties": {**_list_of("Event")["properties"],
                                                           "last_seq": {"type": "integer"}}}, "A page of events"),
                params=[job_id, _param("after", "query", {"type": "integer", "minimum": 0, "default": 0},
                                       "Events with a seq above this (pass the last seq you got)."),
                        _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                               "Page size.")], errors=("400", "401", "404"))},
            "/fine_tuning/jobs/{job_id}/checkpoints": {"get": _op(
                "listJobCheckpoints", "The job's checkpoints with the metrics at their step",
                _json(_list_of("Checkpoint"), "Checkpoints, oldest first"), params=[job_id])},
            "/artifacts": {"get": _op("listArtifacts", "The team's artifacts, newest first",
                                      _json(_list_of("Artifact"), "A page of artifacts"),
                                      params=[TEAM, LIMIT, AFTER_ID, _param("job", "query", {"type": "integer"},
                                                                            "Only this job's artifacts.")],
                                      errors=("400", "401", "404"))},
            "/artifacts/{artifact_id}": {"get": _op("retrieveArtifact", "An artifact",
                                                    _json(_ref("Artifact"), "The artifact"), params=[artifact_id]),
                                         "delete": _delete_op("deleteArtifact", "an artifact", artifact_id)},
            "/artifacts/{artifact_id}/content": {"get": _op(
                "downloadArtifact", "The artifact's files as a zip",
                {"description": "A zip stream", "content": {"application/zip": {
                    "schema": {"type": "string", "contentMediaType": "application/zip"}}}}, params=[artifact_id])},
            "/artifacts/{artifact_id}/scores": {"get": _op(
                "artifactScores", "Every evaluation's scores: the studio's and lm-evaluation-harness's "
                                  "(artifact and base, with standard errors)",
                {"description": "JSON, or CSV with format=csv", "content": {
                    "application/json": {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}}},
                params=[artifact_id, _param("format", "query", {"enum": ["json", "csv"], "default": "json"},
                                            "json or csv")], errors=("400", "401", "404"))},
            "/artifacts/{artifact_id}/publish": {"post": _op(
                "publishArtifact", "Publish the artifact to the Hub (a publish job)", _json(_ref("Job"), "The job"),
                ok_code="201", params=[artifact_id], errors=("400", "401", "403", "404"),
                body={"required": True, "content": {"application/json": {"schema": PUBLISH}}},
                description="Refused at once without a token, with a repo id the hub would not take, or when the "
                            "base model's terms forbid sharing; the job checks the token's rights and the repo's "
                            "owner on the hub before any upload. Follow it at /fine_tuning/jobs/{id}.")},
            "/models": {"get": _op("listModels", "Base models (shared by all teams)",
                                   _json(_list_of("Model"), "All base models"), errors=("401",))},
            "/datasets": {
                "get": _op("listDatasets", "The team's datasets, newest first", _json(_list_of("Dataset"), "A page"),
                           params=[TEAM, LIMIT, AFTER_ID], errors=("400", "401", "404")),
                "post": _op("uploadDataset", "Upload a dataset (checked in full; nothing is stored if a row is bad)",
                            _json(_ref("Dataset"), "The dataset"), ok_code="201", params=[TEAM], body=UPLOAD,
                            errors=("400", "401", "403", "404"),
                            more={"413": _json(_ref("Error"), "Larger than the upload limit")}),
            },
            "/datasets/{dataset_id}": {"get": _op("retrieveDataset", "A dataset", _json(_ref("Dataset"), "The dataset"),
                                                  params=[dataset_id]),
                                       "delete": _delete_op("deleteDataset", "a dataset version", dataset_id)},
            "/teams/{team}/members": {"get": _op(
                "listMembers", "The team's members with their roles", _json(_list_of("Member"), "Members"),
                params=[TEAM_PATH])},
            "/teams/{team}/members/{user_id}": {
                "patch": _op("changeMemberRole", "Change a member's role (team admins)",
                             _json(_ref("Member"), "The member"),
                             params=[TEAM_PATH, USER_ID], errors=("400", "401", "403", "404"),
                             body={"required": True, "content": {"application/json": {"schema": {
                                 "type": "object", "required": ["role"],
                                 "properties": {"role": {"enum": ["viewer", "member", "admin"]}}}}}},
                             more={"409": _json(_ref("Error"), "The team's last admin")}),
                "delete": _op("removeMember", "Remove a member (team admins), or leave (your own id)",
                              _json({"type": "object"}, "Removed"), params=[TEAM_PATH, USER_ID],
                              errors=("401", "403", "404"), more={"409": _json(_ref("Error"), "The team's last admin")},
                              description="Their jobs stay and keep running; their tokens for the team stop at once."),
            },
            "/teams/{team}/invitations": {"post": _op(
                "createInvitation", "A single-use invitation link (team admins)", _json(_ref("Invitation"), "It"),
                ok_code="201", params=[TEAM_PATH], errors=("400", "401", "403", "404"),
                body={"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {
                    "role": {"enum": ["viewer", "member", "admin"], "default": "member"},
                    "email": {"type": "string", "format": "email", "description": "The link is e-mailed there too."},
                    "days": {"type": "integer", "minimum": 1, "maximum": 30, "default": 7}}}}}})},
            "/invitations": {"get": _op(
                "listMyInvitations", "Invitations sent to your verified e-mail address",
                _json(_list_of("Invitation"), "Usable invitations to teams you are not in"), errors=("401",))},
            "/invitations/{invitation_id}/accept": {"post": _op(
                "acceptInvitation", "Join the team of an invitation sent to your verified address",
                _json(_ref("Member"), "Your membership"), params=[_id_param("invitation_id")],
                errors=("401", "403", "404"), more={"410": _json(_ref("Error"), "Used up, revoked or expired")})},
            "/invitations/{invitation_id}/decline": {"post": _op(
                "declineInvitation", "Turn down an invitation sent to your verified address (its link stops too)",
                _json(_ref("Invitation"), "The invitation"), params=[_id_param("invitation_id")],
                errors=("401", "403", "404"))},
            "/openapi.json": {"get": _op("openapi", "This document", _json({"type": "object"}, "OpenAPI 3.1"),
                                         errors=("401",))},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API token: tst_<prefix>_<secret>"}},
            "schemas": {"Job": JOB, "JobCreate": JOB_CREATE, "Event": EVENT, "Checkpoint": CHECKPOINT,
                        "Artifact": ARTIFACT, "Dataset": DATASET, "Model": MODEL, "Error": ERROR,
                        "Deletion": DELETION, "Member": MEMBER, "Invitation": INVITATION, **STEP_SCHEMAS},
            "responses": {
                "BadRequest": _json(_ref("Error"), "Invalid request; error.field names the field"),
                "Unauthorized": _json(_ref("Error"), "No token, or an unknown or revoked one"),
                "Forbidden": _json(_ref("Error"), "Your role in the team does not allow this"),
                "NotFound": _json(_ref("Error"), "No such id in your teams"),
            },
        },
    }
    schema["paths"].update(steps_paths())
    schema["paths"].update(judge_paths())
    schema["paths"].update(openai_paths(origin=server_url.removesuffix("/api/v1") or "/"))
    return schema
