"""Judged comparisons (the form, the result with every judged pair, its JSON and CSV export) and the
forgetting check started from an artifact's page."""

from __future__ import annotations

import csv

from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from studio.accounts.selectors import team_for_new_work
from studio.artifacts.selectors import artifact_list_for_user
from studio.catalog.selectors import team_secrets
from studio.datasets.selectors import dataset_list_for_user
from studio.jobs.pages import job_start
from studio.jobs.forms_judge import PROMPT_SOURCES, judge_request
from studio.jobs.selectors import job_get_for_user
from studio.jobs.selectors_judge import job_result, judged_csv_rows
from studio.jobs.services_judge import HARNESS_COLUMNS, forgetting_harness, job_create_forgetting, job_create_judge


def _team_or_404(request):
    team = team_for_new_work(user=request.user)
    if team is None:
        raise Http404
    return team


@require_http_methods(["GET", "POST"])
def job_new_judge(request):
    """Pick two models (or a tune and its base), the prompts and the judge."""
    team = _team_or_404(request)
    data = request.POST if request.method == "POST" else request.GET
    artifacts = artifact_list_for_user(user=request.user).filter(team=team).select_related("base_model")
    datasets = dataset_list_for_user(user=request.user).filter(team=team)
    errors: dict[str, str] = {}
    if request.method == "POST":
        arguments, errors = judge_request(data=data, artifacts=artifacts, datasets=datasets)
        if not errors:
            jobs, errors = job_start(request, team=team, model_error_field="model_b",
                                     create=lambda: job_create_judge(user=request.user, team=team, **arguments))
            if jobs:
                return redirect(jobs[0])
    context = {"artifacts": artifacts, "datasets": datasets, "secrets": team_secrets(team_id=team.pk),
               "errors": errors, "sources": PROMPT_SOURCES, "data": data,
               "chosen_a": data.get("model_a") or data.get("a") or "base",
               "chosen_b": data.get("model_b") or data.get("b", ""),
               "prompts_from": data.get("prompts_from") or "golden", "judge_kind": data.get("judge_kind") or "endpoint"}
    return render(request, "jobs/new_judge.html", context, status=400 if errors else 200)


def judged_result(request, job_id: int):
    """The outcome and every judged pair; ``?format=json`` or ``?format=csv`` downloads them."""
    job = job_get_for_user(user=request.user, job_id=job_id)
    if job.kind != "judge":
        raise Http404("Not a judged comparison.")
    result = job_result(job, "judged")
    export = request.GET.get("format", "")
    if export and result is None:
        return JsonResponse({"error": f"job #{job.pk} has no result yet (it is {job.status})"}, status=409)
    if export == "json":
        response = JsonResponse({"job": job.pk, "status": job.status, **result}, json_dumps_params={"indent": 2})
        response["Content-Disposition"] = f'attachment; filename="judged-{job.pk}.json"'
        return response
    if export == "csv":
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="judged-{job.pk}.csv"'
        csv.writer(response).writerows(judged_csv_rows(result))
        return response
    return render(request, "jobs/judged.html", {"job": job, "result": result})


@require_POST
def job_new_forgetting(request):
    """From an artifact's page: measure it against its base on the general held-out text, and on harness
    tasks when named (or a dataset version of the team made into a multiple-choice task)."""
    team = _team_or_404(request)
    artifact = artifact_list_for_user(user=request.user).filter(team=team, pk=request.POST.get("artifact") or 0) \
        .select_related("base_model", "job").first() if str(request.POST.get("artifact", "")).isdigit() else None
    if artifact is None:
        raise Http404
    errors: dict[str, str] = {}
    raw = request.POST.get("threshold_pct", "").strip()
    try:
        threshold = float(raw) if raw else None
    except ValueError:
        threshold, errors = None, {"threshold_pct": "must be a number of percent, e.g. 10"}
    chosen = request.POST.get("harness_dataset", "").strip()
    dataset = dataset_list_for_user(user=request.user).filter(team=team, pk=chosen).first() \
        if chosen.isdigit() else None
    if chosen and dataset is None:
        errors["harness_dataset"] = "no such dataset in your team"
    if not errors:
        jobs, errors = job_start(request, team=team, model_error_field="artifact", create=lambda: job_create_forgetting(
            user=request.user, team=team, artifact=artifact, threshold_pct=threshold, harness=forgetting_harness(
                harness_tasks=request.POST.get("harness_tasks", ""), dataset=dataset,
                columns={c: request.POST.get(c, "").strip() for c in HARNESS_COLUMNS})))
        if jobs:
            return redirect(jobs[0])
    return render(request, "jobs/forgetting_refused.html", {"artifact": artifact, "errors": errors}, status=400)

