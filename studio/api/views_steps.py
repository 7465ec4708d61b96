"""/api/v1/merges, /merge-searches, /quantizations, /evaluations: the jobs
that work on artifacts, as the merge, merge search, quantize and evaluate
pages start them.

The checks are the pages' own: the same forms (studio/jobs/forms_steps.py)
parse the parameters, the same services (studio/jobs/services_steps.py)
refuse what cannot run, and studio/jobs/pages.py: job_start records the
start. Here only the JSON is read and the answer shaped.
"""

from __future__ import annotations

from studio.api.auth import api_view
from studio.api.bodies import form_error, json_body, refuse_unknown
from studio.api.errors import ApiError, not_found
from studio.api.selectors import artifact_list_in_team, dataset_get_in_teams, job_get_in_teams
from studio.api.serializers import job_json
from studio.catalog.selectors import base_model_list
from studio.jobs.forms_steps import PARAM_PREFIX, evaluate_form, filled_params, merge_params_form
from studio.jobs.pages import job_start
from studio.jobs.selectors_search import merge_search_result
from studio.jobs.services_search import job_create_merge_search
from studio.jobs.services_steps import job_create_evaluate, job_create_merge, job_create_quantize

MAX_PROMPTS = 8  # as the quantize page keeps


def _id(value, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise ApiError(400, f"{field} must be an id (a whole number)", field=field)
    return int(value)


def _object(body: dict, field: str) -> dict:
    value = body.get(field) or {}
    if not isinstance(value, dict):
        raise ApiError(400, f"{field} must be an object", field=field)
    return value


def _artifacts(team, ids, field: str) -> list:
    """The team's artifacts by id, in the order given; 404 for one that is not there."""
    wanted = [_id(value, field) for value in ids]
    found = {a.pk: a for a in artifact_list_in_team(team_id=team.pk).filter(pk__in=wanted).select_related("base_model")}
    for value in wanted:
        if value not in found:
            raise not_found("artifact", value, field=field)
    return [found[value] for value in wanted]


def _started(request, team, create, *, model_error_field: str, fields: dict[str, str] | None = None) -> dict:
    """Start the job as the page does; what the service refuses is a 400 naming
    the request field (``fields`` maps the service's names to the request's;
    a merge method's parameter "method_params.x" is the request's "params.x")."""
    jobs, errors = job_start(request, team=team, create=create, model_error_field=model_error_field,
                             detail={"via": "api"})
    if errors:
        named = [{"field": (fields or {}).get(key) or key.replace("method_params.", "params.", 1), "message": message}
                 for key, message in errors.items()]
        raise ApiError(400, "; ".join(f"{e['field']}: {e['message']}" for e in named), field=named[0]["field"],
                       errors=named)
    return {**job_json(jobs[0], request=request), "_status": 201}


def _team(request, body: dict, doing: str):
    team = request.caller.team(body.get("team"))
    request.caller.require_writer(team.pk, action=doing)
    return team


def _name(body: dict) -> str:
    name = body.get("name") or ""
    if not isinstance(name, str):
        raise ApiError(400, "name must be a string", field="name")
    return name[:200]


@api_view("POST")
def merges_collection(request):
    """Merge artifacts of one base model (or fold an adapter into its base)."""
    from tuning.merge import MERGE_METHODS

    body = json_body(request)
    refuse_unknown(body, {"artifacts", "method", "params", "weights", "dataset", "name", "team"})
    team = _team(request, body, "merge artifacts")
    if not isinstance(body.get("artifacts"), list) or not body["artifacts"]:
        raise ApiError(400, "artifacts must be a non-empty list of artifact ids", field="artifacts")
    artifacts = _artifacts(team, body["artifacts"], "artifacts")
    weights = body.get("weights")
    if weights is not None and (not isinstance(weights, list) or len(weights) != len(artifacts) or not all(
            isinstance(w, int | float) and not isinstance(w, bool) for w in weights)):
        raise ApiError(400, "weights must be a list of numbers, one per artifact", field="weights")
    method = body.get("method") or next(iter(MERGE_METHODS))
    params = _object(body, "params")
    method_params = {}
    if method in MERGE_METHODS:  # an unknown one is refused by the service, with the list of known ones
        form = merge_params_form(MERGE_METHODS[method].params, {PARAM_PREFIX + k: v for k, v in params.items()})
        refuse_unknown(params, {name.removeprefix(PARAM_PREFIX) for name in form.fields}, "params.")
        if not form.is_valid():
            raise form_error(form, "params.", PARAM_PREFIX)
        method_params = filled_params(form)
    dataset = None
    if body.get("dataset") is not None:
        dataset = dataset_get_in_teams(team_ids=[team.pk], dataset_id=_id(body["dataset"], "dataset"),
                                       field="dataset")
    return _started(request, team, lambda: job_create_merge(
        user=request.caller.user, team=team, artifacts=artifacts, method=method, method_params=method_params,
        weights=[float(w) for w in weights] if weights else None, dataset=dataset, name=_name(body)),
        model_error_field="artifacts",
        fields={"sources": "artifacts", **{f"sources.{i}.path": f"artifacts.{i}" for i in range(len(artifacts))}})


@api_view("POST")
def quantizations_collection(request):
    """Quantize or export an artifact with one scheme (GGUF, torchao …)."""
    body = json_body(request)
    refuse_unknown(body, {"artifact", "scheme", "scheme_params", "eval_dataset", "validation_dataset", "prompts",
                          "report", "name", "team"})
    team = _team(request, body, "quantize artifacts")
    if body.get("artifact") is None:
        raise ApiError(400, "artifact is required: the adapter or model to quantize", field="artifact")
    [artifact] = _artifacts(team, [body["artifact"]], "artifact")
    prompts = body.get("prompts")
    if prompts is not None and (not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts)
                                or len(prompts) > MAX_PROMPTS):
        raise ApiError(400, f"prompts must be a list of at most {MAX_PROMPTS} strings", field="prompts")
    dataset = None
    if body.get("eval_dataset") is not None:
        dataset = dataset_get_in_teams(team_ids=[team.pk], dataset_id=_id(body["eval_dataset"], "eval_dataset"),
                                       field="eval_dataset")
    validation = None
    if body.get("validation_dataset") is not None:  # ComPEFT's α search
        validation = dataset_get_in_teams(team_ids=[team.pk], field="validation_dataset",
                                          dataset_id=_id(body["validation_dataset"], "validation_dataset"))
    prompts = [p.strip() for p in prompts or [] if p.strip()]
    report_settings = _report_settings(body.get("report"))
    scheme_params = body.get("scheme_params") or {}
    if not isinstance(scheme_params, dict):
        raise ApiError(400, "scheme_params must be an object of the scheme's settings (see quantize-schemes)",
                       field="scheme_params")
    return _started(request, team, lambda: job_create_quantize(
        user=request.caller.user, team=team, artifact=artifact, scheme=str(body.get("scheme", "")),
        eval_dataset=dataset, prompts=prompts or None, name=_name(body), report_settings=report_settings,
        scheme_params=scheme_params, validation_dataset=validation),
        model_error_field="artifact", fields={"eval_dataset_path": "eval_dataset", "report": "report",
                                              "validation_dataset_path": "validation_dataset",
                                              "source_path": "artifact",
                                              **{setting: f"report.{key}" for key, setting in REPORT_KEYS.items()}})


# The API's names for the report settings (QuantizeConfig's, less the "report_" they share there).
REPORT_KEYS = {"answers": "report_answers", "agreement": "report_agreement", "speed": "report_speed",
               "eval_rows": "eval_rows", "max_new_tokens": "max_new_tokens"}


def _report_settings(report) -> dict:
    """``"report": false`` (no report), or an object of the parts to measure; values are checked by the service."""
    if report is None:
        return {}
    if isinstance(report, bool):
        return {"report": report}
    if not isinstance(report, dict):
        raise ApiError(400, "report must be false, or an object such as {\"answers\": false, \"speed\": true}",
                       field="report")
    refuse_unknown(report, set(REPORT_KEYS), "report.")
    return {REPORT_KEYS[key]: value for key, value in report.items()}


@api_view("POST")
def evaluations_collection(request):
    """Score an artifact on a dataset of the team."""
    body = json_body(request)
    refuse_unknown(body, {"artifact", "base_model", "dataset", "settings", "name", "team"})
    team = _team(request, body, "evaluate artifacts")
    if (body.get("artifact") is None) == (body.get("base_model") is None):
        raise ApiError(400, "name an artifact, or a base model (base_model) to benchmark on its own", field="artifact")
    if body.get("dataset") is None:
        raise ApiError(400, "dataset is required", field="dataset")
    artifact = base_model = None
    if body.get("artifact") is not None:
        [artifact] = _artifacts(team, [body["artifact"]], "artifact")
    else:
        base_model = base_model_list(team_ids=[team.pk]).filter(pk=_id(body["base_model"], "base_model")).first()
        if base_model is None:
            raise not_found("base model", body["base_model"], field="base_model")
    dataset = dataset_get_in_teams(team_ids=[team.pk], dataset_id=_id(body["dataset"], "dataset"), field="dataset")
    settings_values = _object(body, "settings")
    form = evaluate_form(settings_values)
    refuse_unknown(settings_values, set(form.fields), "settings.")
    if not form.is_valid():
        raise form_error(form, "settings.")
    values = {k: v for k, v in form.cleaned_data.items() if v not in (None, "") and k in settings_values}
    return _started(request, team, lambda: job_create_evaluate(
        user=request.caller.user, team=team, artifact=artifact, base_model=base_model, dataset=dataset,
        settings_values=values, name=_name(body)), model_error_field="artifact" if artifact else "base_model",
        fields={name: f"settings.{name}" for name in form.fields})


@api_view("POST")
def merge_searches_collection(request):
    """Search the coefficients of a merge of two or more artifacts against an evaluate score on a dataset."""
    body = json_body(request)
    refuse_unknown(body, {"artifacts", "method", "search", "params", "dataset", "metric", "evaluate", "budget",
                          "population", "seed", "name", "team"})
    team = _team(request, body, "start merge searches")
    if not isinstance(body.get("artifacts"), list) or len(body["artifacts"]) < 2:
        raise ApiError(400, "artifacts must list two or more artifact ids of one base model", field="artifacts")
    artifacts = _artifacts(team, body["artifacts"], "artifacts")
    if body.get("dataset") is None:
        raise ApiError(400, "dataset is required: every candidate is scored on it", field="dataset")
    dataset = dataset_get_in_teams(team_ids=[team.pk], dataset_id=_id(body["dataset"], "dataset"), field="dataset")
    numbers = {key: body[key] for key in ("budget", "population", "seed") if body.get(key) is not None}
    return _started(request, team, lambda: job_create_merge_search(
        user=request.caller.user, team=team, artifacts=artifacts, method=str(body.get("method") or "task_arithmetic"),
        search=_object(body, "search"), method_params=_object(body, "params"), dataset=dataset,
        metric=str(body.get("metric") or "eval_loss"), evaluate=_object(body, "evaluate"), name=_name(body),
        **numbers), model_error_field="artifacts", fields={"sources": "artifacts"})


@api_view("GET")
def merge_search_retrieve(request, job_id: int):
    """A merge search's candidates (recipe, jobs, score) and the best one; another team's id is a 404."""
    job = job_get_in_teams(team_ids=request.caller.team_ids, job_id=job_id)
    if job.kind != "merge_search":
        raise not_found("merge search", job_id)
    result = merge_search_result(job)
    return {"object": "merge_search", "job": job.pk, "status": job.status, "metric": result["metric"],
            "best": result["best"].index if result["best"] else None,
            "model": result["kept"].pk if result["kept"] else None,
            "candidates": [{"index": row.index, "generation": row.generation, "coefficients": row.coefficients,
                            "recipe": row.recipe, "score": row.score, "outcome": row.outcome,
                            "message": row.message, "merge_job": row.merge_job_id,
                            "evaluate_job": row.evaluate_job_id, "weights_deleted": row.weights_deleted}
                           for row in result["rows"]]}
