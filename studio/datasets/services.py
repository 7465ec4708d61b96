"""Storing datasets. A file is checked in full before anything is stored."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import transaction

from studio.datasets.models import Dataset
from tuning.data.readers import detect_format
from tuning.data.records import DatasetSummary
from tuning.data.tasks import TASKS, summarize
from tuning.errors import DatasetError

SAFE_NAME_CHARS = "-_. "


def _safe_filename(name: str) -> str:
    base = Path(name).name
    cleaned = "".join(ch if ch.isalnum() or ch in SAFE_NAME_CHARS else "_" for ch in base).strip() or "data"
    return cleaned[-120:]


def _summarize_for_every_task(path: Path, filename: str) -> tuple[DatasetSummary, list[str]]:
    """Check the file as data for each task; keep the summary of the first
    task it suits. A file that suits none gets the error of the task that
    read furthest into it (or, when no task found its columns, one message
    listing what every task needs)."""
    summary, tasks, errors = None, [], []
    for task in TASKS:
        try:
            result = summarize(path, name=filename, task=task)
        except DatasetError as exc:
            errors.append(exc)
            continue
        summary = summary or result
        tasks.append(task)
    if summary is not None:
        return summary, tasks
    if all("missing the" in error.reason for error in errors):
        found = errors[0].reason.split("found columns: ")[-1].split(".")[0]
        raise DatasetError(f"no columns this studio knows (found: {found}). Use instruction + output (or prompt + "
                           f"completion), messages or conversations for chat, text + label for classification, "
                           f"or text for continued pre-training", file=filename, row=1)
    raise max(errors, key=lambda error: error.row or 0)


def dataset_create_from_file(*, team, user, source_path: str | Path, filename: str, name: str = "") -> Dataset:
    """Validate ``source_path`` as a dataset named ``filename`` and store a copy.

    Raises DatasetError (naming the file, row and field) and stores nothing
    if any row is bad.
    """
    filename = _safe_filename(filename)
    detect_format(filename)
    summary, tasks = _summarize_for_every_task(Path(source_path), filename)
    dataset = Dataset(
        team=team, created_by=user, name=(name or Path(filename).stem)[:200], format=summary.format,
        row_count=summary.row_count, columns=list(summary.columns), schema=summary.schema, tasks=tasks,
        labels=list(summary.labels),
        preview=[asdict(example) for example in summary.preview], sha256=summary.sha256,
        size_bytes=os.path.getsize(source_path),
    )
    with open(source_path, "rb") as handle:
        dataset.file.save(filename, File(handle), save=False)
    try:
        with transaction.atomic():
            dataset.save()
    except Exception:
        Path(dataset.file.path).unlink(missing_ok=True)  # never leave a file without its row
        raise
    return dataset


def dataset_create_from_upload(*, team, user, upload, name: str = "") -> Dataset:
    """Same, for a Django UploadedFile (streamed to a temporary file first)."""
    if hasattr(upload, "temporary_file_path"):
        return dataset_create_from_file(team=team, user=user, source_path=upload.temporary_file_path(),
                                        filename=upload.name, name=name)
    with tempfile.NamedTemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR, suffix=Path(upload.name).suffix) as tmp:
        for chunk in upload.chunks():
            tmp.write(chunk)
        tmp.flush()
        return dataset_create_from_file(team=team, user=user, source_path=tmp.name, filename=upload.name, name=name)


def dataset_copy_sample(*, team, user, sample_path: Path) -> Dataset:
    """Register a sample file once per team (used by first-run set-up)."""
    existing = Dataset.objects.filter(team=team, name=sample_path.stem).first()
    return existing or dataset_create_from_file(team=team, user=user, source_path=sample_path,
                                                filename=sample_path.name)

