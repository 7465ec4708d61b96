from django.conf import settings
from django.http import JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from studio.accounts.policy import Action, job_allows, refusal
from studio.audit.services import audit_record
from studio.accounts.selectors import team_for_new_work
from studio.catalog.selectors import base_model_list_for_user
from studio.catalog.services import base_model_facts_request
from studio.datasets.selectors import dataset_choices_for_training
from studio.jobs.estimates import train_estimate
from studio.jobs.forms import METHOD_PREFIX, TrainJobForm, initial_from_query, method_to_draw
from studio.jobs.pages import chain_form_context, job_start
from studio.jobs.selectors import job_events_after, job_get_for_user, job_list_page_for_user
from studio.jobs.models import Job
from studio.jobs.selectors_judge import job_result
from studio.jobs.selectors_search import merge_search_result
from studio.jobs.selectors_scores import harness_table, job_scores
from studio.jobs.services import job_cancel, job_create_train, job_resume
from studio.jobs.source_adapters import source_adapter_choices, with_source_adapters
from tuning.errors import ConfigError, ModelError, TuningError
from tuning.methods import TASKS


def job_list(request):
    page = job_list_page_for_user(user=request.user, page=request.GET.get("page"))
    return render(request, "jobs/list.html", {"jobs": page.object_list, "page": page})


def _gpu_pools() -> list:
    return getattr(settings, "GPU_POOLS", [])


def _task(query) -> str:
    return query.get("task") if query.get("task") in TASKS else "sft"


def _bound_form(request, data) -> TrainJobForm:
    return TrainJobForm(data, datasets=dataset_choices_for_training(user=request.user),
                        base_models=base_model_list_for_user(user=request.user),
                        method=data.get("method", ""), task=_task(data), gpu_pools=_gpu_pools(),
                        adapters=source_adapter_choices(user=request.user))


def _redrawn_form(request) -> tuple[TrainJobForm, str]:
    """An unbound form for the values in the query string (the page's own
    fields, sent by htmx or by the no-JS "Update" button), plus a notice when
    the asked-for method cannot be used."""
    task = _task(request.GET)
    method, notice = method_to_draw(request.GET.get("method", ""), task=task, gpu_pools=_gpu_pools())
    initial = initial_from_query(request.GET, method=method, preset=request.GET.get("preset", ""))
    form = TrainJobForm(initial={**initial, "method": method.name},
                        datasets=dataset_choices_for_training(user=request.user),
                        base_models=base_model_list_for_user(user=request.user), method=method.name, task=task,
                        gpu_pools=_gpu_pools(), adapters=source_adapter_choices(user=request.user))
    return form, notice


@require_http_methods(["GET", "POST"])
def job_new(request):
    notice = ""
    if request.method == "GET":
        form, notice = _redrawn_form(request)
    else:
        form = _bound_form(request, request.POST)
    if request.method == "POST" and form.is_valid():
        team = team_for_new_work(user=request.user)
        if team is None or form.cleaned_data["dataset"].team_id != team.pk:
            form.add_error(None, "You can start jobs only in a team where you are a member.")
        else:
            values, params = form.run_settings()
            jobs, errors = job_start(
                request, team=team, model_error_field="base_model", detail={"method": values["method"]},
                create=lambda: job_create_train(user=request.user, team=team, dataset=form.cleaned_data["dataset"],
                                                base_model=form.cleaned_data["base_model"], settings_values=values,
                                                method_params=params, name=form.cleaned_data["name"]))
            if jobs:
                return redirect(jobs[0])
            form.add_config_errors(errors)
    status = 400 if form.errors else 200
    has_datasets = form.fields["dataset"].queryset.exists()
    return render(request, "jobs/new.html", {"form": form, "notice": notice, "has_datasets": has_datasets},
                  status=status)


def job_new_method_fields(request):
    """The method section of the new-job page (picker, presets, settings),
    redrawn for another method, task or preset."""
    form, notice = _redrawn_form(request)
    return render(request, "jobs/_method_section.html", {"form": form, "notice": notice})


def job_new_estimate(request):
    """"≈ 4.9 M trainable of 139 M (3.5 %)" for the form's base model, method and parameters. The counts
    come from a worker (the base model's facts); until they are there, the partial asks again each second."""
    form = _bound_form(request, request.GET)
    form.is_valid()  # only the base model, the method's fields and the run's shape are read
    bad = [f"{form[name].label}: {' '.join(errors)}" for name, errors in form.errors.items()
           if name.startswith(METHOD_PREFIX)]
    base_model = form.cleaned_data.get("base_model")
    if bad or base_model is None:
        return _estimate_response(request, error="; ".join(bad) or "pick a base model")
    try:
        params, _ = with_source_adapters(form.chosen, form.method_params(),
                                         team=team_for_new_work(user=request.user), base_model=base_model)
        estimate = train_estimate(base_model=base_model, method=form.chosen, task=form.chosen_task,
                                  method_params=params, dataset=form.cleaned_data.get("dataset"),
                                  run_values={k: v for k, v in form.cleaned_data.items() if v not in (None, "")},
                                  gpu_pools=_gpu_pools())
    except TuningError as exc:  # the worker's reason: the page says it; an estimate never breaks the form
        return _estimate_response(request, error=str(exc))
    if estimate is None:
        return _estimate_pending(request, base_model=base_model, method=form.chosen.name, params=params,
                                 task=form.chosen_task)
    return _estimate_response(request, text=estimate.text, exact=estimate.exact, preflight=estimate.preflight)


ESTIMATE_PATIENCE = 60  # times the partial asks again, once a second, before it says no worker answers


def _estimate_pending(request, *, base_model, method: str, params: dict, task: str):
    try:
        waited = max(0, int(request.GET.get("waited", 0)))
    except ValueError:
        waited = 0
    if waited >= ESTIMATE_PATIENCE:
        return _estimate_response(request, error=f"no worker has counted it within a minute; is a worker for "
                                                 f"the '{settings.PLAYGROUND_QUEUE}' queue running?")
    base_model_facts_request(base_model=base_model, requests=[(method, params, task)])
    return render(request, "jobs/_method_estimate.html", {"pending": True, "waited": waited + 1})


def _estimate_response(request, *, text: str = "", exact: str = "", error: str = "", preflight=None):
    text = text or f"estimate unavailable: {error[:300]}"
    return render(request, "jobs/_method_estimate.html", {"text": text, "exact": exact, "error": bool(error),
                                                          "preflight": preflight})


def job_detail(request, job_id: int):
    job = job_get_for_user(user=request.user, job_id=job_id)
    forgetting = job_result(job, "forgetting") if job.kind == "forgetting" else None
    # An evaluate job's harness scores (the artifact page shows an artifact's; a base model's have only this page)
    harness = harness_table(job_scores([job])[job.pk]["harness"]) if job.kind == Job.Kind.EVALUATE else []
    search = merge_search_result(job) if job.kind == "merge_search" else None
    return render(request, "jobs/detail.html", {**chain_form_context(job), "artifacts": job.artifacts.all(),
                                                "forgetting": forgetting, "harness_table": harness,
                                                "search": search})


def job_status(request, job_id: int):
    """The status partial alone: swapped in by the job page when a status event arrives."""
    return render(request, "jobs/_status.html", {"job": job_get_for_user(user=request.user, job_id=job_id)})


def _refused(request, job, action: Action):
    """The status box saying why the user may not ``action`` this job (403), or None when they may."""
    if job_allows(user=request.user, job=job, action=action):
        return None
    message = refusal(user=request.user, action=action, team_id=job.team_id)
    return render(request, "jobs/_status.html", {"job": job, "action_error": message}, status=403)


@require_POST
def job_resume_view(request, job_id: int):
    job = job_get_for_user(user=request.user, job_id=job_id)  # 404 for another team's job
    if refused := _refused(request, job, Action.RESUME):
        return refused
    try:
        resumed = job_resume(job=job, user=request.user)
    except (ConfigError, ModelError) as exc:
        return render(request, "jobs/_status.html", {"job": job, "action_error": str(exc)}, status=400)
    audit_record(user=request.user, team=job.team, action="job.resumed", target=resumed,
                 detail={"from_job": job.pk}, request=request)
    if request.htmx:
        response = render(request, "jobs/_status.html", {"job": job})
        response["HX-Redirect"] = resumed.get_absolute_url()
        return response
    return redirect(resumed)


@require_POST
def job_cancel_view(request, job_id: int):
    job = job_get_for_user(user=request.user, job_id=job_id)
    if refused := _refused(request, job, Action.CANCEL):
        return refused
    job = job_cancel(job=job)
    audit_record(user=request.user, team=job.team, action="job.cancelled", target=job, request=request)
    if request.htmx:
        return render(request, "jobs/_status.html", {"job": job})
    return redirect(job)


def job_events(request, job_id: int):
    """Events after ?after=N as JSON: the same stream the WebSocket sends,
    for clients that cannot keep a socket open."""
    job = job_get_for_user(user=request.user, job_id=job_id)
    try:
        after = max(0, int(request.GET.get("after", 0)))
    except ValueError:
        return JsonResponse({"error": "after must be a whole number"}, status=400)
    return JsonResponse({"job": job.pk, "status": job.status, "events": job_events_after(job_id=job.pk, after=after)})
