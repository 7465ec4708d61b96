"""Work on datasets that runs on workers: analyses (preview, token
statistics, lint) and operations (diet steps, column mapping, dropping
flagged rows) that make new versions.

The web side creates the row and enqueues by task name inside
``transaction.on_commit``; the worker (``worker/dataset_tasks.py``) claims
it, reports progress and finishes it through the functions here. Nothing
here imports torch.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from studio.datasets.models import Dataset, DatasetAnalysis, DatasetOperation, WorkStatus
from tuning.data.diet import DIET_OPERATIONS
from tuning.errors import ConfigError

ANALYSE_TASK = "worker.dataset_tasks.analyse_dataset"  # sent by name: the web side never imports worker/
OPERATION_TASK = "worker.dataset_tasks.run_dataset_operation"
# Operations beside the diet table: applying a confirmed column mapping, and the one-click drop of the rows
# a lint finding lists.
EXTRA_OPERATIONS = ("map_columns", "drop_rows")
PROGRESS_EVERY_S = 0.5  # at most two progress writes a second: a big dataset must not write a row per row


def _enqueue(task_name: str, pk: int) -> None:
    from studio.celery import app

    # The default device pool: where this studio's worker listens. A team may route it to a CPU pool.
    app.send_task(task_name, args=[pk], queue=settings.DEFAULT_DEVICE_POOL)


def dataset_analysis_request(*, dataset: Dataset, user, base_model, max_length: int,
                             loss_on_prompt: bool) -> DatasetAnalysis:
    """Queue an analysis of ``dataset`` for ``base_model`` and ``max_length`` on a worker."""
    with transaction.atomic():
        analysis = DatasetAnalysis.objects.create(dataset=dataset, base_model=base_model, max_length=max_length,
                                                  loss_on_prompt=loss_on_prompt, created_by=user,
                                                  phase="waiting for a worker")
        transaction.on_commit(lambda: _enqueue(ANALYSE_TASK, analysis.pk))
    return analysis


def dataset_operation_request(*, dataset: Dataset, user, operation: str, parameters: dict, others=(),
                              base_model=None) -> DatasetOperation:
    """Queue ``operation`` on ``dataset`` (and ``others``, for a merge). The parameters are checked
    against the diet table first, so a bad value is refused here rather than failing on the worker."""
    if operation not in DIET_OPERATIONS and operation not in EXTRA_OPERATIONS:
        raise ConfigError({"operation": f"unknown operation '{operation}'"})
    if operation in DIET_OPERATIONS:
        params = {p.name: p for p in DIET_OPERATIONS[operation].params}
        errors = {key: "is not a parameter of this operation" for key in parameters if key not in params}
        errors |= {name: message for name, p in params.items()
                   if (message := p.check(parameters.get(name, p.default)))}
        if operation == "merge":
            if not others:
                errors["others"] = "pick at least one other version to merge with"
            elif any(other.team_id != dataset.team_id for other in others):
                errors["others"] = "only versions of this team can be merged"
        if "tokenizer" in DIET_OPERATIONS[operation].needs and parameters.get("unit") == "tokens" and not base_model:
            errors["base_model"] = "pick the base model whose tokens to count, or count characters"
        if errors:
            raise ConfigError(errors)
    if not dataset.confirmed and operation != "map_columns":
        raise ConfigError({"dataset": "confirm the column mapping first; this version is not usable yet"})
    with transaction.atomic():
        run = DatasetOperation.objects.create(dataset=dataset, operation=operation, parameters=parameters,
                                              base_model=base_model, created_by=user, phase="waiting for a worker")
        run.others.set(others)
        transaction.on_commit(lambda: _enqueue(OPERATION_TASK, run.pk))
    return run


def dataset_work_start(*, model, pk: int) -> bool:
    """Claim queued work for this worker; False when it is not queued any more (never run twice)."""
    return bool(model.objects.filter(pk=pk, status=WorkStatus.QUEUED).update(
        status=WorkStatus.RUNNING, phase="starting"))


class ProgressReporter:
    """``progress(done, total)`` for the tuning functions: writes the work row's progress at most every
    PROGRESS_EVERY_S seconds, and always at the end, under the phase named by ``phase``."""

    def __init__(self, model, pk: int):
        self.model, self.pk, self.phase, self.last = model, pk, "", 0.0

    def set_phase(self, phase: str, total: int = 0) -> None:
        self.phase = phase[:100]
        self.model.objects.filter(pk=self.pk).update(phase=self.phase, progress_done=0, progress_total=total)
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        self.model.objects.filter(pk=self.pk).update(progress_done=max(0, done), progress_total=max(0, total))


def dataset_work_fail(*, model, pk: int, message: str) -> None:
    model.objects.filter(pk=pk).update(status=WorkStatus.FAILED, message=message[:4000], phase="",
                                       finished_at=timezone.now())


def dataset_analysis_finish(*, analysis_id: int, preview: list, stats: dict, histogram_svg: str,
                            findings: list, message: str = "") -> None:
    DatasetAnalysis.objects.filter(pk=analysis_id).update(
        status=WorkStatus.SUCCEEDED, preview=preview, stats=stats, histogram_svg=histogram_svg, findings=findings,
        message=message, phase="", finished_at=timezone.now())


def dataset_version_create(*, parents: list[Dataset], user, rows_path, operation: str, parameters: dict,
                           report: dict, schema: str, name_suffix: str = "") -> Dataset:
    """Store the rows written at ``rows_path`` (JSON lines, by the worker) as the next version of the
    first parent's family, with lineage to every parent. The file is checked like an upload, so a version
    is exactly as usable for training as an uploaded file of the same rows."""
    from studio.datasets.services import _safe_filename, dataset_describe_file, dataset_store_file

    first = parents[0]
    root = first.root or first
    filename = _safe_filename(f"{root.name[:80]}-{operation}{name_suffix}.jsonl".replace(" ", "_"))
    # The schema is the confirmed one: the rows now carry its canonical column names.
    described = dataset_describe_file([rows_path], names=[filename], schema=schema)
    with transaction.atomic():
        # Numbers are per family; the lock keeps two operations finishing at once from taking the same one.
        Dataset.objects.select_for_update().filter(pk=root.pk).first()
        number = (Dataset.objects.filter(root=root).aggregate(n=Max("version"))["n"] or root.version) + 1
        dataset = Dataset(team=first.team, created_by=user, name=root.name, root=root, version=number,
                          operation=operation, parameters=parameters, report=report, **described)
        dataset_store_file(dataset=dataset, source_path=rows_path, filename=filename)
        dataset.parents.set(parents)
    return dataset


def dataset_operation_finish(*, operation_id: int, results: list[Dataset], report: dict) -> None:
    run = DatasetOperation.objects.get(pk=operation_id)
    run.results.set(results)
    DatasetOperation.objects.filter(pk=operation_id).update(
        status=WorkStatus.SUCCEEDED, phase="", finished_at=timezone.now(), progress_done=1, progress_total=1)
