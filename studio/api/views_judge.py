"""/api/v1/judged-comparisons and /forgetting-checks: the jobs of studio/jobs/services_judge.py, started
with the page's checks (studio/jobs/views_judge.py: judge_request reads the same fields), and their results."""

from __future__ import annotations

from studio.api.auth import api_view
from studio.api.bodies import json_body, refuse_unknown
from studio.api.errors import ApiError, not_found
from studio.api.selectors import artifact_list_in_team, dataset_get_in_teams, job_get_in_teams
from studio.api.serializers import job_json
from studio.api.views_steps import _id, _name, _started, _team
from studio.datasets.models import Dataset
from studio.jobs.selectors_judge import job_result
from studio.jobs.services_judge import (HARNESS_COLUMNS, forgetting_harness, job_create_forgetting,
                                        job_create_judge)
from studio.jobs.forms_judge import judge_request

JUDGE_FIELDS = {"model_a", "model_b", "prompts", "dataset", "max_rows", "max_new_tokens", "judge", "name", "team"}
JUDGE_PARTS = {"url", "model", "api_key", "secret", "artifact", "max_tokens"}


def _judge_data(body: dict) -> dict:
    """The API's body as the page's form fields (judge_request reads those)."""
    judge = body.get("judge")
    if not isinstance(judge, dict):
        raise ApiError(400, "judge must be an object: {\"url\", \"model\", \"api_key\" or \"secret\"} for an "
                            "endpoint, or {\"artifact\"} for a model of the studio", field="judge")
    refuse_unknown(judge, JUDGE_PARTS, "judge.")
    prompts = body.get("prompts", "golden")
    if prompts != "golden" and not (isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)):
        raise ApiError(400, 'prompts must be "golden" or a list of texts', field="prompts")
    source = "dataset" if body.get("dataset") is not None else "golden" if prompts == "golden" else "typed"
    data = {"model_a": body.get("model_a") or "base", "model_b": body.get("model_b"), "prompts_from": source,
            "dataset": body.get("dataset"),
            "judge_kind": "artifact" if judge.get("artifact") is not None else "endpoint",
            "judge_artifact": judge.get("artifact"), "judge_url": judge.get("url") or "",
            "judge_model": judge.get("model") or "", "judge_api_key": judge.get("api_key") or "",
            "judge_secret": judge.get("secret") or "", "name": _name(body)}
    for field, value in (("max_rows", body.get("max_rows")), ("max_new_tokens", body.get("max_new_tokens")),
                         ("judge_max_tokens", judge.get("max_tokens"))):
        if value is not None:
            data[field] = value
    return data


# The page's field names as the API's.
API_FIELDS = {"judge_url": "judge.url", "judge_model": "judge.model", "judge_secret": "judge.secret",
              "judge_artifact": "judge.artifact", "judge_max_tokens": "judge.max_tokens",
              "prompts_from": "prompts", "model_a_path": "model_a", "model_b_path": "model_b"}


@api_view("POST")
def judged_comparisons_collection(request):
    """Queue a judged comparison of two artifacts (or one and its base model)."""
    body = json_body(request)
    refuse_unknown(body, JUDGE_FIELDS)
    team = _team(request, body, "compare models")
    data = _judge_data(body)
    if body.get("dataset") is not None:
        _id(body["dataset"], "dataset")
    artifacts = artifact_list_in_team(team_id=team.pk).select_related("base_model", "job")
    arguments, errors = judge_request(data=data, artifacts=artifacts, datasets=Dataset.objects.filter(team=team),
                                      prompts_list=body.get("prompts") if isinstance(body.get("prompts"), list)
                                      else None)
    if errors:
        named = [{"field": API_FIELDS.get(key, key), "message": message} for key, message in errors.items()]
        raise ApiError(400, "; ".join(f"{e['field']}: {e['message']}" for e in named), field=named[0]["field"],
                       errors=named)
    return _started(request, team, lambda: job_create_judge(user=request.caller.user, team=team, **arguments),
                    model_error_field="model_b", fields=API_FIELDS)


def _with_result(request, job_id: int, *, kind: str, event: str, what: str) -> dict:
    """The job of ``kind`` and, once it has succeeded, the result its ``event`` carries (else null)."""
    job = job_get_in_teams(team_ids=request.caller.team_ids, job_id=job_id)
    if job.kind != kind:
        raise not_found(what, job_id)
    return {**job_json(job, request=request), "object": what.replace(" ", "_"), "result": job_result(job, event)}


@api_view("GET")
def judged_comparison_retrieve(request, job_id: int):
    """The job, and once it has succeeded its summary and every judged pair."""
    return _with_result(request, job_id, kind="judge", event="judged", what="judged comparison")


@api_view("POST")
def forgetting_checks_collection(request):
    """Queue a forgetting check of an artifact against its base model."""
    body = json_body(request)
    refuse_unknown(body, {"artifact", "threshold_pct", "harness", "name", "team"})
    team = _team(request, body, "check models")
    if body.get("artifact") is None:
        raise ApiError(400, "artifact is required", field="artifact")
    artifact = artifact_list_in_team(team_id=team.pk).filter(pk=_id(body["artifact"], "artifact")) \
        .select_related("base_model", "job").first()
    if artifact is None:
        raise not_found("artifact", body["artifact"], field="artifact")
    threshold = body.get("threshold_pct")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, int | float)):
        raise ApiError(400, "threshold_pct must be a number of percent", field="threshold_pct")
    harness = _forgetting_harness(body.get("harness"), team)
    return _started(request, team, lambda: job_create_forgetting(
        user=request.caller.user, team=team, artifact=artifact, threshold_pct=threshold, name=_name(body),
        harness=forgetting_harness(**harness)), model_error_field="artifact")


def _forgetting_harness(harness, team) -> dict:
    """``{"tasks": "arc_easy,…"}`` or ``{"dataset": id, "question_column", …}`` as forgetting_harness's
    arguments."""
    if harness is None:
        return {}
    if not isinstance(harness, dict):
        raise ApiError(400, 'harness must be an object: {"tasks": "arc_easy,hellaswag"} or {"dataset": 3, '
                            '"question_column": "question", "choices_column": "choices", "answer_column": '
                            '"answer"}', field="harness")
    refuse_unknown(harness, {"tasks", "dataset", *HARNESS_COLUMNS}, "harness.")
    tasks = harness.get("tasks") or ""
    if not isinstance(tasks, str):
        raise ApiError(400, "harness.tasks must be task names separated by commas", field="harness.tasks")
    dataset = None
    if harness.get("dataset") is not None:
        dataset = dataset_get_in_teams(team_ids=[team.pk], dataset_id=_id(harness["dataset"], "harness.dataset"),
                                       field="harness.dataset")
    columns = {c: harness[c] for c in HARNESS_COLUMNS if harness.get(c) is not None}
    if any(not isinstance(v, str) for v in columns.values()):
        raise ApiError(400, "harness columns must be column names", field="harness")
    return {"harness_tasks": tasks, "dataset": dataset, "columns": columns}


@api_view("GET")
def forgetting_check_retrieve(request, job_id: int):
    return _with_result(request, job_id, kind="forgetting", event="forgetting", what="forgetting check")
