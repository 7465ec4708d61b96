"""/api/v1/fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints.

Thin: parse, check the role, call the jobs service or a selector, shape JSON.
"""

from __future__ import annotations


from studio.audit.services import audit_record
from studio.accounts.policy import Action, job_allows, refusal
from studio.api.auth import api_view
from studio.api.bodies import json_body
from studio.api.deletes import delete_json
from studio.api.errors import ApiError
from studio.api.selectors import (dataset_get_in_teams, int_param, job_checkpoints, job_events_page,
                                  job_get_in_teams, job_list_in_team, page_newest_first)
from studio.api.serializers import event_json, job_json, page_json
from studio.catalog.selectors import base_model_list
from studio.jobs.forms import SYSTEM_FIELDS
from studio.jobs.models import Job
from studio.jobs.services import job_cancel, job_create_train
from tuning.errors import ConfigError, ModelError, TuningError

CREATE_FIELDS = {"model", "training_file", "method", "hyperparameters", "name", "team"}


def _id(body: dict, name: str) -> int:
    value = body.get(name)
    if value is None:
        raise ApiError(400, f"{name} is required", field=name)
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise ApiError(400, f"{name} must be an id (a whole number)", field=name)
    return int(value)


def _method(body: dict) -> tuple[str, dict]:
    """``method`` is {"type": "lora", "params": {...}}; a plain "lora" means default params."""
    method = body.get("method", "lora")
    if isinstance(method, str):
        return method, {}
    if not isinstance(method, dict) or not isinstance(method.get("type"), str):
        raise ApiError(400, 'method must be {"type": "<method>", "params": {...}}', field="method")
    params = method.get("params") or {}
    unknown = set(method) - {"type", "params"}
    if unknown or not isinstance(params, dict):
        raise ApiError(400, f'method takes "type" and "params" (an object) only; got {sorted(method)}',
                       field="method")
    return method["type"], params


REQUEST_FIELDS = {"dataset": "training_file", "base_model": "model", "storage": "storage"}


def _api_field(config_key: str) -> str:
    """A TrainConfig error key as the request field that caused it."""
    if config_key.startswith("method_params."):
        return "method.params." + config_key.removeprefix("method_params.")
    if config_key == "method":
        return "method.type"
    # What the request names elsewhere than in its hyperparameters (or not at all: the team's storage).
    return REQUEST_FIELDS.get(config_key) or f"hyperparameters.{config_key}"


def _config_error(exc: ConfigError) -> ApiError:
    errors = [{"field": _api_field(key), "message": message} for key, message in exc.errors.items()]
    return ApiError(400, "Invalid settings: " + "; ".join(f"{e['field']}: {e['message']}" for e in errors),
                    field=errors[0]["field"] if errors else None, errors=errors)


def _job_create(request):
    body = json_body(request)
    team = request.caller.team(body.get("team"))
    request.caller.require_writer(team.pk, action="create fine-tuning jobs")
    unknown = sorted(set(body) - CREATE_FIELDS)
    if unknown:
        raise ApiError(400, f"Unknown fields {unknown}; known: {sorted(CREATE_FIELDS)}", field=unknown[0])
    hyperparameters = body.get("hyperparameters") or {}
    if not isinstance(hyperparameters, dict):
        raise ApiError(400, "hyperparameters must be an object", field="hyperparameters")
    # Paths, the base model and the method are the studio's to fill in (or
    # have their own fields): a client cannot point a job at a server path.
    reserved = sorted(set(hyperparameters) & (SYSTEM_FIELDS | {"method_params"}))
    if reserved:
        raise ApiError(400, f"hyperparameters cannot set {reserved}", field=f"hyperparameters.{reserved[0]}")
    method, params = _method(body)
    base_model = base_model_list(team_ids=[team.pk]).filter(pk=_id(body, "model")).first()
    if base_model is None:
        raise ApiError(404, f"No base model with id {body['model']}; GET /api/v1/models lists them", field="model")
    dataset = dataset_get_in_teams(team_ids=[team.pk], dataset_id=_id(body, "training_file"), field="training_file")
    name = body.get("name") or ""
    if not isinstance(name, str):
        raise ApiError(400, "name must be a string", field="name")
    try:
        job = job_create_train(user=request.caller.user, team=team, dataset=dataset, base_model=base_model,
                               settings_values={**hyperparameters, "method": method}, method_params=params,
                               name=name)
    except ConfigError as exc:
        raise _config_error(exc) from None
    except ModelError as exc:
        raise ApiError(400, str(exc), field="model") from None
    except TuningError as exc:
        raise ApiError(400, str(exc)) from None
    audit_record(user=request.caller.user, team=team, action="job.started", target=job,
                 detail={"method": method, "via": "api"}, request=request)
    return {**job_json(job, request=request), "_status": 201}


@api_view("GET", "POST")
def jobs_collection(request):
    if request.method == "POST":
        return _job_create(request)
    team = request.caller.team(request.GET.get("team"))
    jobs, has_more = page_newest_first(job_list_in_team(team_id=team.pk), request.GET)
    return page_json([job_json(job, request=request) for job in jobs], has_more=has_more)


@api_view("GET", "DELETE")
def job_retrieve(request, job_id: int):
    job = job_get_in_teams(team_ids=request.caller.team_ids, job_id=job_id)
    if request.method == "DELETE":
        return delete_json(request, job)
    return job_json(job, request=request)


@api_view("POST")
def job_cancel_api(request, job_id: int):
    """Members cancel their own jobs, admins any job of the team."""
    caller = request.caller
    job = job_get_in_teams(team_ids=caller.team_ids, job_id=job_id)
    if not job_allows(user=caller.user, job=job, action=Action.CANCEL):
        raise ApiError(403, refusal(user=caller.user, action=Action.CANCEL, team_id=job.team_id))
    if job.status in Job.FINISHED:
        raise ApiError(409, f"The job has already {job.status}; there is nothing to cancel", field="status")
    job = job_cancel(job=job)
    audit_record(user=caller.user, team=job.team, action="job.cancelled", target=job, detail={"via": "api"},
                 request=request)
    return job_json(job_get_in_teams(team_ids=caller.team_ids, job_id=job.pk), request=request)


@api_view("GET")
def job_events(request, job_id: int):
    """Events oldest first after seq ``after``; pass the last seq you got as
    the next ``after``. The same {seq, kind, data} the WebSocket sends."""
    job = job_get_in_teams(team_ids=request.caller.team_ids, job_id=job_id)
    events, has_more = job_events_page(job=job, query=request.GET)
    page = page_json([event_json(event) for event in events], has_more=has_more)
    page["last_seq"] = events[-1].seq if events else int_param(request.GET, "after", default=0)
    return page


@api_view("GET")
def job_checkpoints_api(request, job_id: int):
    job = job_get_in_teams(team_ids=request.caller.team_ids, job_id=job_id)
    return page_json(job_checkpoints(job=job), has_more=False)
