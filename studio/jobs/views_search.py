"""The merge search page: pick two or more artifacts of one base, a method,
the coefficients to search and their ranges, the dataset and metric every
candidate is scored by, a budget and a population; the search's parent job
is queued (studio/jobs/services_search.py)."""

from __future__ import annotations

from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from studio.accounts.selectors import team_for_new_work
from studio.artifacts.selectors import artifact_list_for_user
from studio.datasets.selectors import dataset_list_for_user
from studio.jobs.pages import job_start
from studio.jobs.services_search import job_create_merge_search
from tuning.merge_search import METRICS, SEARCH_METHODS, TASK_CHOICES_SEARCHED

# The page's numbers: {form name: (what the service calls it, its type)}.
NUMBERS = {"budget": int, "population": int, "seed": int}
EVALUATE_NUMBERS = ("max_rows", "generate_rows", "max_new_tokens", "max_length")


def _number(data, name: str, kind, errors: dict, field: str | None = None):
    raw = data.get(name, "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        errors[field or name] = "must be a whole number" if kind is int else "must be a number"
        return None


def search_ranges(data, chosen: list, errors: dict) -> dict:
    """{coefficient: [low, high]} from the page: a source's weight ("weight_low_<artifact id>" …, numbered by
    the source's place among the chosen ones) and the method's settings ("scaling_low" …); a blank pair is a
    coefficient left alone."""
    pairs = {f"weight.{i}": f"weight_{{}}_{a.pk}" for i, a in enumerate(chosen)}
    pairs.update({name: f"{name}_{{}}" for name in ("scaling", "density")})
    ranges = {}
    for coefficient, pattern in pairs.items():
        low = _number(data, pattern.format("low"), float, errors, f"search.{coefficient}")
        high = _number(data, pattern.format("high"), float, errors, f"search.{coefficient}")
        if low is None and high is None:
            continue
        if low is None or high is None:
            errors[f"search.{coefficient}"] = "give both ends of the range, or neither"
            continue
        ranges[coefficient] = [low, high]
    return ranges


@require_http_methods(["GET", "POST"])
def job_new_merge_search(request):
    team = team_for_new_work(user=request.user)
    if team is None:
        raise Http404
    data = request.POST if request.method == "POST" else request.GET
    artifacts = artifact_list_for_user(user=request.user).filter(team=team).select_related("base_model")
    datasets = dataset_list_for_user(user=request.user).filter(team=team)
    chosen_ids = [int(i) for i in data.getlist("artifacts") if str(i).isdigit()]
    errors: dict[str, str] = {}
    if request.method == "POST":
        found = {a.pk: a for a in artifacts.filter(pk__in=chosen_ids)}
        chosen = [found[i] for i in chosen_ids if i in found]  # another team's id is as good as none
        search = search_ranges(data, chosen, errors)
        numbers = {name: _number(data, name, kind, errors) for name, kind in NUMBERS.items()}
        evaluate = {"task": data.get("task", "sft")}
        evaluate.update({name: value for name in EVALUATE_NUMBERS
                         if (value := _number(data, name, int, errors, f"evaluate.{name}")) is not None})
        dataset = datasets.filter(pk=data["dataset"]).first() if data.get("dataset", "").isdigit() else None
        if not errors:
            jobs, errors = job_start(
                request, team=team, model_error_field="sources",
                create=lambda: job_create_merge_search(
                    user=request.user, team=team, artifacts=chosen, method=data.get("method", ""), search=search,
                    method_params={}, dataset=dataset, metric=data.get("metric", ""), evaluate=evaluate,
                    name=data.get("name", ""), **{k: v for k, v in numbers.items() if v is not None}))
            if jobs:
                return redirect(jobs[0])
    context = {"artifacts": artifacts, "datasets": datasets, "chosen_ids": set(chosen_ids), "errors": errors,
               "methods": SEARCH_METHODS, "metrics": list(METRICS), "tasks": TASK_CHOICES_SEARCHED, "data": data}
    return render(request, "jobs/new_merge_search.html", context, status=400 if errors else 200)
