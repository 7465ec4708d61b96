"""Reads of datasets, their versions and the work done on them."""

from __future__ import annotations

from pathlib import Path

from django.core.files.storage import default_storage
from django.db.models import OuterRef, Q, Subquery
from django.shortcuts import get_object_or_404

from studio.accounts.selectors import team_ids_for_user
from studio.datasets.models import Dataset, DatasetAnalysis, DatasetOperation
from studio.jobs.models import Job


def dataset_list_for_user(*, user):
    """Every version of every dataset of the user's teams (jobs pick one version)."""
    return Dataset.objects.filter(team_id__in=team_ids_for_user(user=user))


def dataset_uploads_for_user(*, user):
    """The uploads (version 1 of each family), for the dataset list."""
    return dataset_list_for_user(user=user).filter(root__isnull=True).prefetch_related("descendants")


def dataset_get_for_user(*, user, dataset_id: int) -> Dataset:
    """The dataset, or 404 when it does not exist or belongs to another team."""
    return get_object_or_404(dataset_list_for_user(user=user), pk=dataset_id)


def dataset_data_files(dataset: Dataset) -> tuple[list[Path], list[str]]:
    """The stored file(s) of a version and the names messages use for them (several for a multi-file
    upload, in upload order)."""
    stored = list(dict.fromkeys(entry["stored"] for entry in dataset.source_files if entry.get("stored")))
    stored = stored or [dataset.file.name]
    return [Path(default_storage.path(name)) for name in stored], [Path(name).name for name in stored]


def dataset_version_tree(dataset: Dataset) -> list[dict]:
    """Every version of the dataset's family as a tree: [{"version": Dataset, "children": [...]}],
    each version under its first parent; a merge also names its other parents."""
    root_id = dataset.family_root_id
    versions = list(Dataset.objects.filter(Q(pk=root_id) | Q(root_id=root_id))
                    .prefetch_related("parents").order_by("version", "pk"))
    by_parent: dict[int | None, list[Dataset]] = {}
    ids = {v.pk for v in versions}
    for version in versions:
        parents = sorted(version.parents.all(), key=lambda p: p.pk)
        version.other_parents = parents[1:]
        first = next((p.pk for p in parents if p.pk in ids), None)
        by_parent.setdefault(first if version.pk != root_id else None, []).append(version)

    def branch(parent_id):
        return [{"version": v, "children": branch(v.pk)} for v in by_parent.get(parent_id, [])]

    return branch(None)


def dataset_latest_analysis(dataset: Dataset) -> DatasetAnalysis | None:
    return dataset.analyses.select_related("base_model", "job").order_by("-created_at", "-pk").first()


def dataset_analysis_get(*, dataset: Dataset, analysis_id: int) -> DatasetAnalysis:
    return get_object_or_404(dataset.analyses.select_related("base_model", "job"), pk=analysis_id)


def dataset_operation_list(dataset: Dataset):
    return dataset.operations.select_related("job").prefetch_related("results").order_by("-created_at", "-pk")


def dataset_operation_get(*, dataset: Dataset, operation_id: int) -> DatasetOperation:
    return get_object_or_404(dataset.operations.select_related("job").prefetch_related("results"), pk=operation_id)


def dataset_blocking_findings(dataset: Dataset) -> list[dict]:
    """The blocking lint findings of the latest finished analysis of this version ([] when none ran or
    none were found). A version with any must not be trained on: drop the rows first."""
    analysis = (dataset.analyses.filter(job__status=Job.Status.SUCCEEDED).order_by("-job__finished_at", "-pk")
                .first())
    return [f for f in analysis.findings if f.get("severity") == "blocking"] if analysis else []


def analysis_drop_plan(*, analysis: DatasetAnalysis, codes: list[str]) -> dict | None:
    """What dropping the rows of these findings of ``analysis`` does, as the parameters of one ``drop_rows``
    step: every listed row once (a row two findings list goes once), and each finding's count, so that
    several kinds of problem are cleaned into one new version. None when a code is not a fixable finding."""
    wanted = set(codes)
    chosen = [f for f in analysis.findings if f["code"] in wanted and f.get("fixable")]
    if not wanted or len(chosen) != len(wanted):
        return None
    rows = sorted({row for f in chosen for row in f.get("all_rows", f["rows"])})
    return {"codes": [f["code"] for f in chosen], "counts": {f["code"]: f["count"] for f in chosen},
            "rows": rows, "analysis": analysis.pk}


# Fields the new-job form's list of versions never reads: a version's report and parameters can list tens of
# thousands of row numbers (a dedupe's removed rows, a clean-up's dropped ones), which the list must not decode.
UNLISTED_FIELDS = ("preview", "parameters", "report", "columns", "labels", "column_mapping", "source_files")


def dataset_choices_for_training(*, user):
    """The versions the new-job form lists, each annotated with ``blocking_rows`` (from its latest finished
    analysis, None when none ran), in one query: what ``dataset_training_blocker`` reads."""
    latest = (DatasetAnalysis.objects.filter(dataset=OuterRef("pk"), job__status=Job.Status.SUCCEEDED)
              .order_by("-job__finished_at", "-pk").values("blocking_rows")[:1])
    return (dataset_list_for_user(user=user).defer(*UNLISTED_FIELDS)
            .annotate(blocking_rows=Subquery(latest)).order_by("name", "version"))


def dataset_training_blocker(dataset: Dataset) -> str:
    """Why a version of ``dataset_choices_for_training`` cannot be trained on, in a few words for its entry
    in the list ("" when it can); ``dataset_training_refusal`` is the full sentence the service gives."""
    if not dataset.confirmed:
        return "columns not confirmed yet"
    if dataset.problem:
        return "has rows training refuses: analyse it and drop them"
    if getattr(dataset, "blocking_rows", None):
        rows = dataset.blocking_rows
        return f"{rows} row{'s' * (rows != 1)} block{'s' * (rows == 1)} training: drop them on the dataset page"
    if not dataset.tasks:
        return "no training task reads this data"
    return ""


def dataset_training_refusal(dataset: Dataset) -> str | None:
    """Why ``dataset`` cannot be trained on, in words for the job form, or None when it can."""
    if not dataset.confirmed:
        return (f"{dataset} is waiting for its column mapping to be confirmed; confirm it on the dataset page "
                f"and train on the version that makes")
    if dataset.problem:
        return (f"{dataset} has rows training would refuse ({dataset.problem}); analyse it on the dataset page "
                f"and drop the rows the checks list")
    blocking = dataset_blocking_findings(dataset)
    if blocking:
        listed = "; ".join(f"{f['message']} (rows {', '.join(map(str, f['rows'][:10]))}"
                           f"{' …' if f.get('count', 0) > 10 else ''})" for f in blocking)
        return f"{dataset} has blocking problems: {listed}. Drop these rows on the dataset page first"
    return None


def dataset_merge_candidates(dataset: Dataset):
    """Other usable versions of the same team and schema."""
    return (Dataset.objects.filter(team_id=dataset.team_id, schema=dataset.schema, confirmed=True)
            .exclude(pk=dataset.pk).order_by("name", "version"))
