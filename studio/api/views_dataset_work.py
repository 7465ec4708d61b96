"""/api/v1/datasets/<id>/mapping, /operations, /analyses: confirming an
unsure column mapping, diet steps and analyses, as the dataset page does.

The pages' forms (studio/datasets/forms.py) parse the values and the
pages' services (studio/datasets/services_work.py) check and queue the
work; each is a job, followed at /api/v1/fine_tuning/jobs/<job>.
"""

from __future__ import annotations

from studio.api.auth import api_view
from studio.api.bodies import form_error, json_body, refuse_unknown
from studio.api.errors import ApiError
from studio.api.selectors import dataset_get_in_teams, page_newest_first
from studio.api.serializers import analysis_json, operation_json, page_json
from studio.audit.services import audit_record
from studio.catalog.selectors import base_model_list
from studio.datasets.forms import AnalysisForm, column_mapping_form, diet_form, diet_parameters
from studio.datasets.selectors import dataset_analysis_get, dataset_merge_candidates, dataset_operation_get
from studio.datasets.services_work import (dataset_analysis_request, dataset_confirm_mapping,
                                           dataset_operation_request)
from tuning.data.diet import DIET_OPERATIONS
from tuning.data.schema import SCHEMAS, schema_fields
from tuning.errors import ConfigError, DatasetError


def _writable(request, dataset_id: int, doing: str):
    dataset = dataset_get_in_teams(team_ids=request.caller.team_ids, dataset_id=dataset_id)
    request.caller.require_writer(dataset.team_id, action=doing)
    return dataset


def _queued(request, dataset, run) -> dict:
    audit_record(user=request.caller.user, team=dataset.team, action="dataset.changed", target=dataset,
                 detail={"operation": run.operation, "via": "api"}, request=request)
    return {**operation_json(run), "_status": 202}


def _config_error(exc: ConfigError, prefix: str) -> ApiError:
    errors = [{"field": key if key in ("dataset", "operation", "others", "base_model") else prefix + key,
               "message": message} for key, message in exc.errors.items()]
    return ApiError(400, "; ".join(f"{e['field']}: {e['message']}" for e in errors), field=errors[0]["field"],
                    errors=errors)


@api_view("POST")
def dataset_mapping_api(request, dataset_id: int):
    """Confirm the schema and column mapping of an unsure upload; a worker
    writes the mapped rows as the next version."""
    body = json_body(request)
    refuse_unknown(body, {"schema", "mapping"})
    dataset = _writable(request, dataset_id, "confirm column mappings")
    schema, mapping = str(body.get("schema") or ""), body.get("mapping") or {}
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise ApiError(400, 'mapping must be an object {"<field>": "<column>"}', field="mapping")
    try:
        if schema in SCHEMAS:  # else the service names the schemas there are
            form = column_mapping_form(fields=schema_fields(schema), columns=dataset.columns, data=mapping)
            refuse_unknown(mapping, set(form.fields), "mapping.")
            if not form.is_valid():
                raise form_error(form, "mapping.")
            mapping = form.cleaned_data
        run = dataset_confirm_mapping(dataset=dataset, user=request.caller.user, schema=schema, mapping=mapping)
    except DatasetError as exc:
        field = "schema" if exc.field == "schema" else f"mapping.{exc.field}" if exc.field else "mapping"
        raise ApiError(400, exc.reason, field=field) from None
    return _queued(request, dataset, run)


def _diet_data(operation: str, params: dict, body: dict) -> dict:
    """The request as the diet form's data (its fields carry the operation's
    prefix); a parameter left out takes its default, as the page's form shows it."""
    defaults = {p.name: p.default for p in DIET_OPERATIONS[operation].params if p.default is not None}
    data = {f"{operation}-{name}": value for name, value in (defaults | params).items()}
    if body.get("others") is not None:
        data[f"{operation}-others"] = body["others"]
    if body.get("base_model") is not None:
        data[f"{operation}-base_model"] = body["base_model"]
    return data


@api_view("GET", "POST")
def dataset_operations_api(request, dataset_id: int):
    """GET: the version's diet steps (and mapping), newest first. POST: run
    one diet step; its result is a new version (``results`` once done)."""
    if request.method == "GET":
        dataset = dataset_get_in_teams(team_ids=request.caller.team_ids, dataset_id=dataset_id)
        rows, has_more = page_newest_first(dataset.operations.select_related("job").prefetch_related("results"),
                                           request.GET)
        return page_json([operation_json(run) for run in rows], has_more=has_more)
    body = json_body(request)
    refuse_unknown(body, {"operation", "params", "others", "base_model"})
    dataset = _writable(request, dataset_id, "run diet steps")
    operation = body.get("operation")
    if operation not in DIET_OPERATIONS:
        raise ApiError(400, f"operation must be one of {', '.join(DIET_OPERATIONS)}", field="operation")
    params = body.get("params") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "params must be an object", field="params")
    form = diet_form(operation, _diet_data(operation, params, body), merge_choices=dataset_merge_candidates(dataset),
                     base_models=base_model_list(team_ids=[dataset.team_id]))
    refuse_unknown(params, set(form.fields) - {"others", "base_model"}, "params.")
    if not form.is_valid():
        raise form_error(form, "params.", f"{operation}-")
    try:
        run = dataset_operation_request(
            dataset=dataset, user=request.caller.user, operation=operation,
            parameters=diet_parameters(operation, form.cleaned_data),
            others=list(form.cleaned_data.get("others") or ()), base_model=form.cleaned_data.get("base_model"))
    except ConfigError as exc:
        raise _config_error(exc, "params.") from None
    return _queued(request, dataset, run)


@api_view("GET")
def dataset_operation_api(request, dataset_id: int, operation_id: int):
    dataset = dataset_get_in_teams(team_ids=request.caller.team_ids, dataset_id=dataset_id)
    return operation_json(dataset_operation_get(dataset=dataset, operation_id=operation_id))


@api_view("POST")
def dataset_analyses_api(request, dataset_id: int):
    """Analyse a version for a base model and max length: token statistics,
    lint findings and the rendered first rows (GET the analysis once its job ends)."""
    body = json_body(request)
    refuse_unknown(body, {"base_model", "max_length", "loss_on_prompt", "chat_template"})
    dataset = _writable(request, dataset_id, "analyse datasets")
    if not dataset.confirmed:
        raise ApiError(400, "Confirm the column mapping first (POST .../mapping); then analyse the version it makes",
                       field="dataset")
    form = AnalysisForm(body, dataset=dataset)
    if not form.is_valid():
        raise form_error(form)
    run = dataset_analysis_request(dataset=dataset, user=request.caller.user, **form.cleaned_data)
    return {**analysis_json(run), "_status": 202}


@api_view("GET")
def dataset_analysis_api(request, dataset_id: int, analysis_id: int):
    dataset = dataset_get_in_teams(team_ids=request.caller.team_ids, dataset_id=dataset_id)
    return analysis_json(dataset_analysis_get(dataset=dataset, analysis_id=analysis_id))
