"""Dataset pages: upload, the dataset page (schema, versions, analysis,
diet), and the htmx partials the page swaps in. Analyses and operations run
as jobs: their partials carry the job progress component
(``jobs/_progress.html``), which follows the job's event stream and fetches
the partial again when the job ends."""

from django.conf import settings
from django.http import Http404
from django.shortcuts import redirect, render
from django.template.defaultfilters import filesizeformat
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from studio.audit.services import audit_record
from studio.accounts.policy import Action, allows
from studio.accounts.selectors import team_for_new_work
from studio.catalog.models import BaseModel
from studio.catalog.selectors import base_model_list
from studio.datasets.forms import (AnalysisForm, DatasetUploadForm, column_mapping_form, diet_form,
                                   diet_parameters)
from studio.datasets.selectors import (analysis_drop_plan, dataset_analysis_get, dataset_get_for_user,
                                       dataset_latest_analysis, dataset_merge_candidates, dataset_operation_get,
                                       dataset_operation_list, dataset_uploads_for_user, dataset_version_tree)
from studio.datasets.services import dataset_create_from_uploads
from studio.datasets.services_work import (dataset_analysis_request, dataset_confirm_mapping,
                                           dataset_operation_request)
from tuning.data.diet import DIET_OPERATIONS
from tuning.data.schema import SCHEMAS, schema_fields
from tuning.errors import ConfigError, DatasetError

READ_ONLY = "You have view-only access to this team; ask a team admin for the member role."


@require_http_methods(["GET", "POST"])
def dataset_list(request):
    """The team's datasets and the upload form (posted with htmx)."""
    form = DatasetUploadForm(request.POST or None, request.FILES or None)
    if request.method == "POST":
        team = team_for_new_work(user=request.user)
        if getattr(request, "upload_too_large", False):
            form = DatasetUploadForm(request.POST)
            form.add_error("file", f"The file is larger than the {filesizeformat(settings.UPLOAD_MAX_BYTES)} "
                                   f"upload limit; split it or upload a sample.")
        elif team is None:
            form.add_error(None, READ_ONLY)
        elif form.is_valid():
            try:
                dataset = dataset_create_from_uploads(team=team, user=request.user,
                                                      uploads=form.cleaned_data["file"],
                                                      name=form.cleaned_data["name"])
            except DatasetError as exc:
                form.add_error("file", str(exc))
            else:
                audit_record(user=request.user, team=team, action="dataset.uploaded", target=dataset,
                             detail={"rows": dataset.row_count}, request=request)
                if request.htmx:
                    response = render(request, "datasets/_upload_form.html", {"form": DatasetUploadForm()})
                    response["HX-Redirect"] = dataset.get_absolute_url()
                    return response
                return redirect(dataset)
        if request.htmx:
            # htmx swaps only 2xx responses by default; the partial carries the errors.
            return render(request, "datasets/_upload_form.html", {"form": form})
    context = {"form": form, "datasets": dataset_uploads_for_user(user=request.user),
               "upload_limit": settings.UPLOAD_MAX_BYTES}
    return render(request, "datasets/list.html", context, status=400 if form.errors else 200)


def _can_write(request, dataset) -> bool:
    return allows(user=request.user, action=Action.CREATE, team_id=dataset.team_id)


def _default_base_model(dataset):
    """The bundled chat model if there is one (not the bundled sentence encoder), else the first."""
    models = list(base_model_list(team_ids=[dataset.team_id]))
    for model in models:
        if model.source == BaseModel.Source.BUNDLED and "encoder" not in model.name.lower():
            return model
    return models[0] if models else None


def _mapping_context(dataset, schema: str | None = None, data=None) -> dict:
    schema = schema if schema in SCHEMAS else (dataset.schema or dataset.detected_schema or "alpaca")
    if schema not in SCHEMAS:
        schema = "alpaca"
    initial = dataset.column_mapping if schema in (dataset.schema, dataset.detected_schema) else {}
    form = column_mapping_form(fields=schema_fields(schema), columns=dataset.columns, data=data, initial=initial)
    return {"dataset": dataset, "mapping_form": form, "mapping_schema": schema, "schemas": list(SCHEMAS)}


def _diet_forms(dataset, data_for: str | None = None, data=None) -> list:
    base_models = base_model_list(team_ids=[dataset.team_id])
    return [(name, op, diet_form(name, data if name == data_for else None, base_models=base_models,
                                  merge_choices=dataset_merge_candidates(dataset)))
            for name, op in DIET_OPERATIONS.items()]


def _detail_context(request, dataset) -> dict:
    analysis = dataset_latest_analysis(dataset)
    initial = ({"base_model": analysis.base_model_id, "max_length": analysis.max_length,
                "loss_on_prompt": analysis.loss_on_prompt, "chat_template": analysis.chat_template} if analysis
               else {"base_model": _default_base_model(dataset)})
    return {"dataset": dataset, "tree": dataset_version_tree(dataset), "analysis": analysis,
            "analysis_form": AnalysisForm(initial=initial, dataset=dataset),
            "operations": dataset_operation_list(dataset)[:10],
            "diet_forms": _diet_forms(dataset), "can_write": _can_write(request, dataset),
            **(_mapping_context(dataset) if not dataset.confirmed else {})}


def dataset_detail(request, dataset_id: int):
    dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    return render(request, "datasets/detail.html", _detail_context(request, dataset))


@require_http_methods(["GET", "POST"])
def dataset_mapping(request, dataset_id: int):
    """GET: the mapping form for ?schema= (htmx swaps it when the schema select changes).
    POST: confirm the mapping; a worker then writes the mapped version."""
    dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    if request.method == "GET":
        return render(request, "datasets/_mapping.html", _mapping_context(dataset, request.GET.get("schema")))
    schema = request.POST.get("schema", "")
    context = _mapping_context(dataset, schema, request.POST)
    form = context["mapping_form"]
    if not _can_write(request, dataset):
        form.add_error(None, READ_ONLY)
    elif form.is_valid():
        try:
            run = dataset_confirm_mapping(dataset=dataset, user=request.user, schema=schema,
                                          mapping=form.cleaned_data)
        except DatasetError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.reason)
        else:
            return render(request, "datasets/_operation.html", {"dataset": dataset, "run": run})
    return render(request, "datasets/_mapping.html", context)


@require_POST
def dataset_analyse(request, dataset_id: int):
    dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    form = AnalysisForm(request.POST, dataset=dataset)
    analysis = None
    if not _can_write(request, dataset):
        form.add_error(None, READ_ONLY)
    elif not dataset.confirmed:
        form.add_error(None, "Confirm the column mapping first; then analyse the version it makes.")
    elif form.is_valid():
        analysis = dataset_analysis_request(dataset=dataset, user=request.user, **form.cleaned_data)
    return render(request, "datasets/_analysis.html", {"dataset": dataset, "analysis": analysis,
                                                       "analysis_form": form, "can_write": True},
                  status=200 if analysis or request.htmx else 400)


@require_GET
def dataset_analysis(request, dataset_id: int, analysis_id: int):
    """The analysis partial (fetched again by the progress component when its job ends)."""
    dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    analysis = dataset_analysis_get(dataset=dataset, analysis_id=analysis_id)
    form = AnalysisForm(initial={"base_model": analysis.base_model_id, "max_length": analysis.max_length,
                                 "loss_on_prompt": analysis.loss_on_prompt, "chat_template": analysis.chat_template},
                        dataset=dataset)
    return render(request, "datasets/_analysis.html", {"dataset": dataset, "analysis": analysis,
                                                       "analysis_form": form,
                                                       "can_write": _can_write(request, dataset)})


@require_POST
def dataset_diet(request, dataset_id: int, operation: str):
    dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    if operation not in DIET_OPERATIONS:
        raise Http404("no such operation")
    form = dict((name, f) for name, _, f in _diet_forms(dataset, operation, request.POST))[operation]
    run = None
    if not _can_write(request, dataset):
        form.add_error(None, READ_ONLY)
    elif form.is_valid():
        try:
            run = dataset_operation_request(
                dataset=dataset, user=request.user, operation=operation,
                parameters=diet_parameters(operation, form.cleaned_data),
                others=list(form.cleaned_data.get("others") or ()), base_model=form.cleaned_data.get("base_model"))
        except ConfigError as exc:
            for field, message in exc.errors.items():
                form.add_error(field if field in form.fields else None, message)
    if run is not None:
        response = render(request, "datasets/_operation.html", {"dataset": dataset, "run": run})
        # The form stays as it is; the running step goes to the top of the list below the forms.
        response["HX-Retarget"], response["HX-Reswap"] = "#operations", "afterbegin"
        return response
    return render(request, "datasets/_diet_form.html",
                  {"dataset": dataset, "name": operation, "op": DIET_OPERATIONS[operation], "form": form})


@require_GET
def dataset_operation(request, dataset_id: int, operation_id: int):
    """One operation's partial (fetched again by the progress component when its job ends)."""
    dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    run = dataset_operation_get(dataset=dataset, operation_id=operation_id)
    # Once it is done, the version tree on the page is refreshed too (an out-of-band swap).
    tree = dataset_version_tree(dataset) if run.finished and request.htmx else None
    return render(request, "datasets/_operation.html", {"dataset": dataset, "run": run, "tree": tree})


@require_POST
def dataset_drop_rows(request, dataset_id: int, analysis_id: int):
    """The one-click clean-up: one new version without the rows of every finding ticked (each ``code``)."""
    dataset = dataset_get_for_user(user=request.user, dataset_id=dataset_id)
    analysis = dataset_analysis_get(dataset=dataset, analysis_id=analysis_id)
    codes = request.POST.getlist("code")
    if not codes:
        return render(request, "datasets/_operation.html",
                      {"dataset": dataset, "error": "Tick at least one finding whose rows should go."}, status=400)
    plan = analysis_drop_plan(analysis=analysis, codes=codes)
    if plan is None:
        raise Http404("no such finding")
    if not _can_write(request, dataset):
        return render(request, "datasets/_operation.html", {"dataset": dataset, "error": READ_ONLY}, status=403)
    run = dataset_operation_request(dataset=dataset, user=request.user, operation="drop_rows", parameters=plan)
    return render(request, "datasets/_operation.html", {"dataset": dataset, "run": run})
