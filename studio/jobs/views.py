from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from studio.accounts.selectors import team_for_new_work
from studio.catalog.selectors import base_model_list
from studio.datasets.selectors import dataset_list_for_user
from studio.jobs.forms import TrainJobForm
from studio.jobs.selectors import job_events_after, job_get_for_user, job_list_for_user
from studio.jobs.services import job_cancel, job_create_train
from tuning.errors import ConfigError


def job_list(request):
    return render(request, "jobs/list.html", {"jobs": job_list_for_user(user=request.user)[:200]})


@require_http_methods(["GET", "POST"])
def job_new(request):
    datasets = dataset_list_for_user(user=request.user)
    method = request.POST.get("method") or request.GET.get("method") or "lora"
    initial = {"dataset": request.GET.get("dataset")} if request.GET.get("dataset") else None
    form = TrainJobForm(request.POST or None, initial=initial, datasets=datasets, base_models=base_model_list(),
                        method=method)
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
            else:
                return redirect(job)
    status = 400 if form.errors else 200
    return render(request, "jobs/new.html", {"form": form, "method": form.method, "has_datasets": datasets.exists()},
                  status=status)


def job_detail(request, job_id: int):
    job = job_get_for_user(user=request.user, job_id=job_id)
    return render(request, "jobs/detail.html", {"job": job, "artifacts": job.artifacts.all()})


def job_status(request, job_id: int):
    """The status partial alone: swapped in by the job page when a status event arrives."""
    return render(request, "jobs/_status.html", {"job": job_get_for_user(user=request.user, job_id=job_id)})


@require_POST
def job_cancel_view(request, job_id: int):
    job = job_get_for_user(user=request.user, job_id=job_id)
    team = team_for_new_work(user=request.user)
    if team is None or team.pk != job.team_id:
        raise Http404  # viewers cannot cancel; they see the job but not the button
    job = job_cancel(job=job)
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
