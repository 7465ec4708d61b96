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
from tuning.data.readers import detect_format, summarize

SAFE_NAME_CHARS = "-_. "


def _safe_filename(name: str) -> str:
    base = Path(name).name
    cleaned = "".join(ch if ch.isalnum() or ch in SAFE_NAME_CHARS else "_" for ch in base).strip() or "data"
    return cleaned[-120:]


def dataset_create_from_file(*, team, user, source_path: str | Path, filename: str, name: str = "") -> Dataset:
    """Validate ``source_path`` as a dataset named ``filename`` and store a copy.

    Raises DatasetError (naming the file, row and field) and stores nothing
    if any row is bad.
    """
    filename = _safe_filename(filename)
    detect_format(filename)
    summary = summarize(source_path, name=filename)
    dataset = Dataset(
        team=team, created_by=user, name=(name or Path(filename).stem)[:200], format=summary.format,
        row_count=summary.row_count, columns=list(summary.columns),
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

