"""Work on datasets, run as jobs of the one job system: analyses (kind
``analyse``: preview, token statistics, lint) and operations (kind
``diet``: diet steps, column mapping, dropping flagged rows) that make new
versions.

The web side stores the request row (``DatasetAnalysis`` or
``DatasetOperation``) beside a queued Job; the worker
(``worker/dataset_runs.py``) runs it like any job — claim, heartbeat,
progress events over the WebSocket, recovery after a lost worker — and
writes the result through the functions here. Nothing here imports torch.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Max

from studio.datasets.models import Dataset, DatasetAnalysis, DatasetOperation
from studio.datasets.services import (dataset_describe_file, dataset_store_file, safe_filename)
from studio.jobs.models import Job
from studio.jobs.state import job_create
from tuning.data.diet import DIET_OPERATIONS
from tuning.data.schema import SCHEMAS, check_mapping, schema_fields
from tuning.errors import ConfigError, DatasetError

# Operations beside the diet table: applying a confirmed column mapping, and the one-click drop of the rows
# a lint finding lists.
EXTRA_OPERATIONS = ("map_columns", "drop_rows")


def dataset_analysis_request(*, dataset: Dataset, user, base_model, max_length: int,
                             loss_on_prompt: bool, chat_template: str = "auto") -> DatasetAnalysis:
    """Queue an analysis of ``dataset`` for ``base_model`` and ``max_length`` on a worker."""
    with transaction.atomic():
        job = job_create(kind=Job.Kind.ANALYSE, team=dataset.team, owner=user, dataset=dataset,
                         base_model=base_model, name=f"Analyse {dataset}",
                         config={"max_length": max_length, "loss_on_prompt": loss_on_prompt,
                                 "chat_template": chat_template})
        return DatasetAnalysis.objects.create(job=job, dataset=dataset, base_model=base_model, max_length=max_length,
                                              loss_on_prompt=loss_on_prompt, chat_template=chat_template,
                                              created_by=user)


def _check_parameters(*, dataset: Dataset, operation: str, parameters: dict, others, base_model) -> None:
    """Refuse a bad value here, naming the field, rather than failing on the worker."""
    params = {p.name: p for p in DIET_OPERATIONS[operation].params}
    errors = {key: "is not a parameter of this operation" for key in parameters if key not in params}
    errors |= {name: message for name, p in params.items() if (message := p.check(parameters.get(name, p.default)))}
    if operation == "merge":
        if not others:
            errors["others"] = "pick at least one other version to merge with"
        elif any(other.team_id != dataset.team_id for other in others):
            errors["others"] = "only versions of this team can be merged"
    if "tokenizer" in DIET_OPERATIONS[operation].needs and parameters.get("unit") == "tokens" and not base_model:
        errors["base_model"] = "pick the base model whose tokens to count, or count characters"
    if errors:
        raise ConfigError(errors)


def dataset_operation_request(*, dataset: Dataset, user, operation: str, parameters: dict, others=(),
                              base_model=None) -> DatasetOperation:
    """Queue ``operation`` on ``dataset`` (and ``others``, for a merge), parameters checked first."""
    if operation not in DIET_OPERATIONS and operation not in EXTRA_OPERATIONS:
        raise ConfigError({"operation": f"unknown operation '{operation}'"})
    if operation in DIET_OPERATIONS:
        _check_parameters(dataset=dataset, operation=operation, parameters=parameters, others=others,
                          base_model=base_model)
    if not dataset.confirmed and operation != "map_columns":
        raise ConfigError({"dataset": "confirm the column mapping first; this version is not usable yet"})
    label = DIET_OPERATIONS[operation].label if operation in DIET_OPERATIONS else operation.replace("_", " ")
    with transaction.atomic():
        job = job_create(kind=Job.Kind.DIET, team=dataset.team, owner=user, dataset=dataset, base_model=base_model,
                         name=f"{label.capitalize()}: {dataset}",
                         config={"operation": operation, "parameters": parameters,
                                 "others": [other.pk for other in others]})
        run = DatasetOperation.objects.create(job=job, dataset=dataset, operation=operation, parameters=parameters,
                                              base_model=base_model, created_by=user)
        run.others.set(others)
    return run


def dataset_confirm_mapping(*, dataset: Dataset, user, schema: str, mapping: dict[str, str]) -> DatasetOperation:
    """Record the user's schema and column mapping and queue the worker that writes the mapped rows as
    the next version (the one jobs can train on). Raises DatasetError for a mapping that names a field
    the schema lacks or a column the data lacks, or leaves a required field unmapped."""
    if schema not in SCHEMAS:
        raise DatasetError(f"pick a schema: one of {', '.join(SCHEMAS)}", field="schema")
    mapping = {field: column for field, column in mapping.items() if column}
    missing = [f["name"] for f in schema_fields(schema) if f["required"] and f["name"] not in mapping]
    if missing:
        raise DatasetError(f"choose the column that holds {', '.join(missing)}", field=missing[0])
    mapping = check_mapping(mapping, dataset.columns, schema=schema, file=dataset.name)
    with transaction.atomic():
        Dataset.objects.filter(pk=dataset.pk).update(column_mapping=mapping, schema=schema)
        return dataset_operation_request(dataset=dataset, user=user, operation="map_columns",
                                         parameters={"schema": schema, "mapping": mapping})


# ---- written by the worker ---------------------------------------------------


def dataset_analysis_save(*, analysis_id: int, preview: list, stats: dict, histogram_svg: str, findings: list,
                          notice: str = "", template_in_effect: str = "") -> None:
    """The analysis's results; the job's end is recorded by the job system."""
    DatasetAnalysis.objects.filter(pk=analysis_id).update(preview=preview, stats=stats, histogram_svg=histogram_svg,
                                                          findings=findings, notice=notice,
                                                          template_in_effect=template_in_effect[:200],
                                                          blocking_rows=blocking_row_count(findings))


def blocking_row_count(findings: list[dict]) -> int:
    """Rows the blocking findings list, each counted once (a row can have two problems)."""
    return len({row for f in findings if f.get("severity") == "blocking" for row in f.get("all_rows", f["rows"])})


def _version_filename(parents: list[Dataset], operation: str, name_suffix: str) -> str:
    root = parents[0].root or parents[0]
    return safe_filename(f"{root.name[:80]}-{operation}{name_suffix}.jsonl".replace(" ", "_"))


def _describe_version(*, parents: list[Dataset], rows_path, operation: str, schema: str, name_suffix: str = "",
                      **_) -> dict:
    # The schema is the confirmed one: the rows now carry its canonical column names.
    return dataset_describe_file([rows_path], names=[_version_filename(parents, operation, name_suffix)],
                                 schema=schema)


def _store_version(*, parents: list[Dataset], user, rows_path, operation: str, parameters: dict, report: dict,
                   described: dict, name_suffix: str = "", **_) -> Dataset:
    first = parents[0]
    root = first.root or first
    with transaction.atomic():
        # Numbers are per family (deleted versions count: a restored one keeps its number); the lock keeps
        # two operations finishing at once from taking the same one.
        Dataset.objects.select_for_update().filter(pk=root.pk).first()
        number = (Dataset.everything.filter(root=root).aggregate(n=Max("version"))["n"] or root.version) + 1
        dataset = Dataset(team=first.team, created_by=user, name=root.name, root=root, version=number,
                          operation=operation, parameters=parameters, report=report, **described)
        dataset_store_file(dataset=dataset, source_path=rows_path,
                           filename=_version_filename(parents, operation, name_suffix))
        dataset.parents.set(parents)
    return dataset


def dataset_version_create(**version) -> Dataset:
    """One version, as ``dataset_operation_store`` stores each (the same keyword arguments), without an
    operation to record it in."""
    return _store_version(**version, described=_describe_version(**version))


def dataset_operation_store(*, operation_id: int, versions: list[dict]) -> list[Dataset]:
    """Store the rows files an operation wrote (JSON lines, by the worker) as the next versions of the first
    parent's family, with lineage to every parent, and record them as the operation's results, in one
    transaction: a worker lost half-way leaves no version that no operation made, and the next attempt
    makes them once. Each of ``versions`` is a dict of ``parents``, ``user``, ``rows_path``, ``operation``,
    ``parameters``, ``report``, ``schema`` and optionally ``name_suffix``. Each file is checked like an
    upload, before the transaction, so a version is exactly as usable for training as an uploaded file of
    the same rows."""
    described = [_describe_version(**version) for version in versions]
    with transaction.atomic():
        made = [_store_version(**version, described=d) for version, d in zip(versions, described)]
        DatasetOperation.objects.get(pk=operation_id).results.set(made)
    return made
