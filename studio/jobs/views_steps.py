"""New merge and quantize jobs, and chains of them queued at once."""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from studio.accounts.selectors import team_for_new_work
from studio.artifacts.selectors import artifact_list_for_user
from studio.catalog.selectors import base_model_list
from studio.datasets.selectors import dataset_list_for_user
from studio.jobs.forms_steps import evaluate_form, filled_params, merge_params_form, quantize_report_form
from studio.jobs.pages import chain_form_context, job_start, model_config_in, quantize_estimate, quantize_schemes
from studio.jobs.selectors import job_get_for_user
from studio.jobs.services_steps import job_create_chain, job_create_evaluate, job_create_merge, job_create_quantize
from tuning.errors import ConfigError
from tuning.merge_search import SEARCH_METHODS

def _team_or_404(request):
    """The team new work goes to; viewers (no such team) get 404."""
    team = team_for_new_work(user=request.user)
    if team is None:
        raise Http404
    return team


def _team_artifacts(request, team):
    return artifact_list_for_user(user=request.user).filter(team=team).select_related("base_model")


def _picked(request, team, ids) -> list:
    """Artifacts by id, in the order given, from the user's team only."""
    wanted = [int(i) for i in ids if str(i).isdigit()]
    found = {a.pk: a for a in _team_artifacts(request, team).filter(pk__in=wanted)}
    return [found[i] for i in wanted if i in found]


def _weights(request, artifacts) -> tuple[list[float] | None, str]:
    raw = [request.POST.get(f"weight_{a.pk}", "").strip() for a in artifacts]
    if not any(raw):
        return None, ""
    try:
        return [float(value or 1.0) for value in raw], ""
    except ValueError:
        return None, "weights must be numbers, e.g. 0.5"


def _with_paper_url(described: dict) -> dict:
    """Papers are cited as "title, URL": the card links the URL."""
    title, _, url = described.get("paper", "").rpartition(", ")
    return {**described, "paper_title": title, "paper_url": url if url.startswith("http") else ""}


@require_http_methods(["GET", "POST"])
def job_new_merge(request):
    from tuning.merge import MERGE_METHODS, describe

    team = _team_or_404(request)
    data = request.POST if request.method == "POST" else request.GET
    method_name = data.get("method") if data.get("method") in MERGE_METHODS else next(iter(MERGE_METHODS))
    method = MERGE_METHODS[method_name]
    artifacts = _team_artifacts(request, team)
    chosen_ids = data.getlist("artifacts") or data.getlist("artifact")
    preset = (method.presets or {}).get(data.get("preset", ""))
    params_form = merge_params_form(method.params, request.POST if request.method == "POST" else None, preset)
    errors: dict[str, str] = {}
    if request.method == "POST":
        chosen = _picked(request, team, chosen_ids)
        weights, weight_error = _weights(request, chosen)
        if weight_error:
            errors["weights"] = weight_error
        if params_form.is_valid() and not errors:
            dataset = None
            if data.get("dataset"):
                dataset = dataset_list_for_user(user=request.user).filter(team=team, pk=data["dataset"]).first()
            jobs, errors = job_start(
                request, team=team, model_error_field="sources",
                create=lambda: job_create_merge(user=request.user, team=team, artifacts=chosen, method=method_name,
                                                method_params=filled_params(params_form), weights=weights,
                                                dataset=dataset, name=data.get("name", "")))
            if jobs:
                return redirect(jobs[0])
    context = {"methods": [_with_paper_url(describe(m)) for m in MERGE_METHODS.values()],
               "method": _with_paper_url(describe(method)),
               "artifacts": artifacts, "chosen_ids": {str(i) for i in chosen_ids}, "params_form": params_form,
               "errors": errors, "datasets": dataset_list_for_user(user=request.user).filter(team=team),
               "name": data.get("name", ""), "preset": data.get("preset", "") if preset else "",
               "searchable": SEARCH_METHODS}
    return render(request, "jobs/new_merge.html", context, status=400 if errors else 200)


SCHEME_PARAM = "scheme_param__{scheme}__"  # a scheme's own settings on the quantize page, one input each


def _scheme_params(data, scheme: str) -> dict:
    """The chosen scheme's settings from the page, as numbers where they read as numbers (the scheme checks them)."""
    prefix, params = SCHEME_PARAM.format(scheme=scheme), {}
    for key, value in data.items():
        if key.startswith(prefix) and value.strip():
            try:
                number = float(value)
                params[key.removeprefix(prefix)] = int(number) if number.is_integer() and "." not in value else number
            except ValueError:
                params[key.removeprefix(prefix)] = value  # the scheme's check names it
    return params


@require_http_methods(["GET", "POST"])
def job_new_quantize(request):
    team = _team_or_404(request)
    data = request.POST if request.method == "POST" else request.GET
    artifacts = _team_artifacts(request, team)
    datasets = dataset_list_for_user(user=request.user).filter(team=team)
    errors: dict[str, str] = {}
    report_form = quantize_report_form(request.POST if request.method == "POST" else None)
    if request.method == "POST":
        picked = _picked(request, team, [data.get("artifact", "")])
        dataset = datasets.filter(pk=data["dataset"]).first() if data.get("dataset", "").isdigit() else None
        validation = datasets.filter(pk=data["validation_dataset"]).first() \
            if data.get("validation_dataset", "").isdigit() else None
        prompts = [line.strip() for line in data.get("prompts", "").splitlines() if line.strip()][:8]
        if not report_form.is_valid():
            errors.update({field: " ".join(messages) for field, messages in report_form.errors.items()})
        elif not picked:
            errors["artifact"] = "pick the adapter or model to quantize"
        else:
            report_settings = {k: v for k, v in report_form.cleaned_data.items() if v is not None}
            scheme_params = _scheme_params(data, data.get("scheme", ""))
            jobs, errors = job_start(
                request, team=team, model_error_field="artifact",
                create=lambda: job_create_quantize(user=request.user, team=team, artifact=picked[0],
                                                   scheme=data.get("scheme", ""), eval_dataset=dataset,
                                                   prompts=prompts or None, name=data.get("name", ""),
                                                   report_settings=report_settings, scheme_params=scheme_params,
                                                   validation_dataset=validation))
            if jobs:
                return redirect(jobs[0])
    from tuning.quantize.config import DEFAULT_PROMPTS

    chosen = data.get("artifact", "")
    shown = (artifacts.filter(pk=chosen).first() if chosen.isdigit() else None) or artifacts.first()
    config = model_config_in(shown.path, shown.base_model and shown.base_model.ref) if shown else None
    schemes = [(_with_paper_url(scheme), reason) for scheme, reason in quantize_schemes(config)]
    for scheme, _ in schemes:  # a chosen preset fills its scheme's inputs
        if scheme["name"] == data.get("scheme") and data.get("preset") in scheme["presets"]:
            scheme["params"] = {**scheme["params"], **scheme["presets"][data["preset"]]["settings"]}
    context = {"schemes": schemes, "chosen_preset": data.get("preset", ""),
               "chosen_validation": data.get("validation_dataset", ""),
               "artifacts": artifacts, "datasets": datasets, "errors": errors,
               "estimate": quantize_estimate(shown, chosen_scheme=data.get("scheme", "")),
               "chosen_artifact": data.get("artifact", ""), "chosen_scheme": data.get("scheme", ""),
               "chosen_dataset": data.get("dataset", ""),
               "prompts": data.get("prompts") or "\n".join(DEFAULT_PROMPTS), "name": data.get("name", ""),
               "report_form": report_form}
    return render(request, "jobs/new_quantize.html", context, status=400 if errors else 200)


@require_POST
def job_chain(request, job_id: int):
    """From a training job's page: fold its adapter into the base and/or
    quantize, queued at once; each step starts when the one before succeeds."""
    job = job_get_for_user(user=request.user, job_id=job_id)
    team = _team_or_404(request)
    if job.team_id != team.pk:
        raise Http404
    start = job.artifacts.order_by("-created_at").first() if job.is_finished else job
    steps = []
    if request.POST.get("fold"):
        steps.append({"kind": "fold"})
    if request.POST.get("scheme"):
        steps.append({"kind": "quantize", "scheme": request.POST["scheme"], "eval_dataset": job.dataset})

    def create():
        if start is None:
            raise ConfigError({"steps": "this job made no artifact to start from"})
        return job_create_chain(user=request.user, team=team, start=start, steps=steps)

    jobs, errors = job_start(request, team=team, create=create, model_error_field="steps")
    if errors:
        return render(request, "jobs/_chain_form.html", {**chain_form_context(job),
                                                         "chain_error": "; ".join(errors.values())}, status=400)
    if request.htmx:
        return render(request, "jobs/_chain_form.html", {**chain_form_context(job), "queued": jobs})
    return redirect(jobs[0])


@require_http_methods(["GET", "POST"])
def job_new_evaluate(request):
    """Score an artifact on a dataset: loss and perplexity, exact match and
    ROUGE-L of generated answers, or accuracy and F1 for classifiers; or a
    harness benchmark of it, or of a base model on its own ("base-ID")."""
    team = _team_or_404(request)
    data = request.POST if request.method == "POST" else request.GET
    artifacts = _team_artifacts(request, team)
    datasets = dataset_list_for_user(user=request.user).filter(team=team)
    form = evaluate_form(request.POST if request.method == "POST" else None)
    errors: dict[str, str] = {}
    base_models = base_model_list(team_ids=[team.pk])
    chosen_base = data.get("artifact", "").removeprefix("base-") if data.get("artifact", "").startswith("base-") \
        else ""
    if request.method == "POST" and form.is_valid():
        picked = _picked(request, team, [data.get("artifact", "")])
        base_model = base_models.filter(pk=chosen_base).first() if chosen_base.isdigit() else None
        dataset = datasets.filter(pk=data["dataset"]).first() if data.get("dataset", "").isdigit() else None
        if not (picked or base_model) or dataset is None:
            errors["artifact"] = "pick an artifact (or a base model) and a dataset"
        else:
            values = {k: v for k, v in form.cleaned_data.items() if v not in (None, "")}
            jobs, errors = job_start(
                request, team=team, model_error_field="artifact",
                create=lambda: job_create_evaluate(user=request.user, team=team, artifact=picked[0] if picked else None,
                                                   base_model=base_model, dataset=dataset, settings_values=values,
                                                   name=data.get("name", "")))
            if jobs:
                return redirect(jobs[0])
    context = {"form": form, "artifacts": artifacts, "datasets": datasets, "errors": errors,
               "base_models": base_models, "chosen_base": chosen_base,
               "chosen_artifact": data.get("artifact", ""), "chosen_dataset": data.get("dataset", "")}
    return render(request, "jobs/new_evaluate.html", context, status=400 if errors or form.errors else 200)
