import functools
import logging
import math

from django.conf import settings
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from studio.audit.services import audit_record
from studio.accounts.selectors import team_for_new_work
from studio.catalog.selectors import base_model_list
from studio.datasets.selectors import dataset_list_for_user
from studio.jobs.models import Job
from studio.jobs.forms import METHOD_PREFIX, TrainJobForm, initial_from_query, method_to_draw
from studio.jobs.selectors import job_events_after, job_get_for_user, job_list_for_user
from studio.jobs.services import job_cancel, job_create_train, job_resume
from tuning.config import TrainConfig
from tuning.errors import ConfigError, ModelError, TuningError
from tuning.methods import TASKS
from tuning.models import MODEL_CODE_LOCK, load_model_config

log = logging.getLogger(__name__)


def job_list(request):
    return render(request, "jobs/list.html", {"jobs": job_list_for_user(user=request.user)[:200]})


def _gpu_pools() -> list:
    return getattr(settings, "GPU_POOLS", [])


def _task(query) -> str:
    return query.get("task") if query.get("task") in TASKS else "sft"


def _bound_form(request, data) -> TrainJobForm:
    return TrainJobForm(data, datasets=dataset_list_for_user(user=request.user), base_models=base_model_list(),
                        method=data.get("method", ""), task=_task(data), gpu_pools=_gpu_pools())


def _redrawn_form(request) -> tuple[TrainJobForm, str]:
    """An unbound form for the values in the query string (the page's own
    fields, sent by htmx or by the no-JS "Update" button), plus a notice when
    the asked-for method cannot be used."""
    task = _task(request.GET)
    method, notice = method_to_draw(request.GET.get("method", ""), task=task, gpu_pools=_gpu_pools())
    initial = initial_from_query(request.GET, method=method, preset=request.GET.get("preset", ""))
    form = TrainJobForm(initial={**initial, "method": method.name}, datasets=dataset_list_for_user(user=request.user),
                        base_models=base_model_list(), method=method.name, task=task, gpu_pools=_gpu_pools())
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
            try:
                job = job_create_train(user=request.user, team=team, dataset=form.cleaned_data["dataset"],
                                       base_model=form.cleaned_data["base_model"], settings_values=values,
                                       method_params=params, name=form.cleaned_data["name"])
            except ConfigError as exc:
                form.add_config_errors(exc.errors)
            except ModelError as exc:
                form.add_error("base_model", str(exc))
            else:
                audit_record(user=request.user, team=team, action="job.started", target=job,
                             detail={"method": values.get("method", "")}, request=request)
                return redirect(job)
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
    """"≈ 4.9 M trainable of 139 M (3.5 %)" for the form's base model, method and parameters."""
    form = _bound_form(request, request.GET)
    form.is_valid()  # only the base model and the method's fields are read
    bad = [f"{form[name].label}: {' '.join(errors)}" for name, errors in form.errors.items()
           if name.startswith(METHOD_PREFIX)]
    base_model = form.cleaned_data.get("base_model")
    if bad or base_model is None:
        return _estimate_response(request, error="; ".join(bad) or "pick a base model")
    try:
        trainable, total = _trainable_parameters(base_model.ref, form.chosen.name,
                                                 tuple(sorted(form.method_params().items())), form.chosen_task)
    except Exception as exc:  # the page says why; an estimate never breaks the form
        if not isinstance(exc, TuningError):
            log.warning("trainable-parameter estimate failed for %s with %s", base_model.ref, form.chosen.name,
                        exc_info=True)
        return _estimate_response(request, error=str(exc))
    return _estimate_response(request, text=_estimate_text(trainable, total),
                              exact=f"{trainable:,} of {total:,} parameters",
                              preflight=_preflight(form, base_model, trainable, total))


def _preflight(form, base_model, trainable: int, total: int) -> dict:
    """Memory needed against the pool's device memory, and the time at the
    pool's recent speed; with the changes that would make it fit."""
    from studio.jobs.selectors_queue import pool_memory_bytes, pool_tokens_per_s
    from tuning.config import field_specs
    from tuning.methods.memory import changes_that_fit, estimate_training_memory

    values = {spec.name: spec.default for spec in field_specs(TrainConfig)}
    values |= {k: v for k, v in form.cleaned_data.items() if v not in (None, "")}
    gpu_method = form.chosen.needs_gpu
    pool = _gpu_pools()[0] if gpu_method and _gpu_pools() else settings.DEFAULT_DEVICE_POOL
    shape = {"batch_size": values["batch_size"], "max_length": values["max_length"],
             "precision": values["precision"], "gradient_checkpointing": values["gradient_checkpointing"]}
    config = _model_config(base_model.ref)
    # The trainer fuses the head and the loss for these methods (tuning.loss).
    shape["fused_loss"] = form.chosen.group != "prompts" and not form.chosen.loss_from_model
    need = estimate_training_memory(config, trainable=trainable, total=total, task=form.chosen_task,
                                    four_bit_base=form.chosen.name == "qlora", **shape)
    available = pool_memory_bytes(pool)
    result = {"need_gib": need.total / 2**30, "parts": {k: v / 2**30 for k, v in need.to_dict().items() if k != "total"},
              "pool": pool, "available_gib": available / 2**30 if available else None, "fits": True}
    if available and need.total > available:
        result["fits"] = False
        result["changes"] = changes_that_fit(config, available=available, trainable=trainable, total=total,
                                             gpu=bool(_gpu_pools()), task=form.chosen_task, **shape)
    speed = pool_tokens_per_s(pool, base_model_id=base_model.pk)
    dataset = form.cleaned_data.get("dataset")
    rows_per_step = values["batch_size"] * values["gradient_accumulation"]
    steps = values.get("max_steps") or (math.ceil(dataset.row_count / rows_per_step) * values["epochs"]
                                        if dataset else None)
    if speed and steps:
        # An upper bound: every row counted at max length.
        result["minutes"] = steps * rows_per_step * values["max_length"] / speed / 60
        result["tokens_per_s"] = speed
    return result


def _estimate_response(request, *, text: str = "", exact: str = "", error: str = "", preflight=None):
    text = text or f"estimate unavailable: {error[:300]}"
    return render(request, "jobs/_method_estimate.html", {"text": text, "exact": exact, "error": bool(error),
                                                          "preflight": preflight})


# The estimate reads only the base model's config and builds the model on the
# meta device (shapes, no weights); transformers is imported on first use.
# One at a time (MODEL_CODE_LOCK): a first import of transformers in two
# threads at once fails.


@functools.lru_cache(maxsize=32)
def _model_config(ref: str):
    return load_model_config(ref, trust_remote_code=settings.TRUST_REMOTE_CODE)


@functools.lru_cache(maxsize=256)
def _trainable_parameters(ref: str, method: str, params: tuple, task: str) -> tuple[int, int]:
    from tuning.methods.estimate import estimate_trainable_parameters

    with MODEL_CODE_LOCK:
        return estimate_trainable_parameters(_model_config(ref), method, dict(params), task=task)


def _estimate_text(trainable: int, total: int) -> str:
    percent = 100 * trainable / max(total, 1)
    return f"≈ {_count(trainable)} trainable of {_count(total)} ({percent:.{3 if percent >= 10 else 2}g} %)"


def _count(n: int) -> str:
    """4_910_000 -> "4.9 M", 139_000_000 -> "139 M"."""
    for unit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= unit:
            return f"{n / unit:.1f} {suffix}" if n < 10 * unit else f"{n / unit:.0f} {suffix}"
    return str(n)


def job_detail(request, job_id: int):
    job = job_get_for_user(user=request.user, job_id=job_id)
    from studio.jobs.views_steps import quantize_schemes

    schemes = quantize_schemes() if job.kind == Job.Kind.TRAIN else []
    return render(request, "jobs/detail.html", {"job": job, "artifacts": job.artifacts.all(), "schemes": schemes})


def job_status(request, job_id: int):
    """The status partial alone: swapped in by the job page when a status event arrives."""
    return render(request, "jobs/_status.html", {"job": job_get_for_user(user=request.user, job_id=job_id)})


def _job_to_act_on(request, job_id: int):
    """The job, if the user may act on it (a member of its team); viewers
    and other teams get 404, as if the job did not exist."""
    job = job_get_for_user(user=request.user, job_id=job_id)
    team = team_for_new_work(user=request.user)
    if team is None or team.pk != job.team_id:
        raise Http404
    return job


@require_POST
def job_resume_view(request, job_id: int):
    job = _job_to_act_on(request, job_id)
    try:
        resumed = job_resume(job=job, user=request.user)
    except (ConfigError, ModelError) as exc:
        return render(request, "jobs/_status.html", {"job": job, "resume_error": str(exc)}, status=400)
    audit_record(user=request.user, team=job.team, action="job.resumed", target=resumed,
                 detail={"from_job": job.pk}, request=request)
    if request.htmx:
        response = render(request, "jobs/_status.html", {"job": job})
        response["HX-Redirect"] = resumed.get_absolute_url()
        return response
    return redirect(resumed)


@require_POST
def job_cancel_view(request, job_id: int):
    job = job_cancel(job=_job_to_act_on(request, job_id))
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
