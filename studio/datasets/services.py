"""Storing datasets. Every file is checked in full, streaming row by row,
before anything is stored.

An upload whose schema is detected for sure (columns named as the schema
names them) is version 1 and usable at once. One whose schema is unsure
(aliases, ties, or no known columns), or that spans several files, is
stored as version 1 but not usable: the user confirms a column mapping,
and a worker writes the rows with canonical column names as version 2
(operation ``map_columns``), which is what jobs train on. So the trainer
only ever reads one file whose columns it recognises, and the mapping is
recorded in that version's lineage.
"""

from __future__ import annotations

import dataclasses
import tempfile
from itertools import islice
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction

from studio.datasets.models import Dataset, dataset_upload_path
from studio.storage.selectors import storage_quota_refusal
from tuning.data import formats
from tuning.data.records import file_sha256, readable_value
from tuning.data.schema import detect, tasks_for_schema
from tuning.data.tasks import TRAINABLE, summarize
from tuning.errors import DatasetError

SAFE_NAME_CHARS = "-_. "
PREVIEW_ROWS = 5
PREVIEW_VALUE_CHARS = 300  # a raw preview cell shows the start of a long value


def safe_filename(name: str) -> str:
    base = Path(name).name
    cleaned = "".join(ch if ch.isalnum() or ch in SAFE_NAME_CHARS else "_" for ch in base).strip() or "data"
    return cleaned[-120:]


def _raw_preview(paths: list, names: list[str]) -> list[dict]:
    """The first rows as the file has them (a conversation as "speaker: text" lines, not JSON), values cut
    short with a visible ellipsis, for a dataset whose schema is not confirmed or whose rows need dropping."""
    return [{key: readable_value(value, PREVIEW_VALUE_CHARS) for key, value in row.data.items()}
            for row in islice(formats.iter_rows(paths, names=names), PREVIEW_ROWS)]


def _count_rows(paths: list, names: list[str]) -> int:
    """Every record read (and so checked as JSON/CSV/Parquet), without a schema: used while the user has
    not yet said which column is which. Text files count their non-blank lines."""
    count = 0
    for source in formats.iter_sources(paths, names):
        if source.format == "text":
            count += sum(1 for _, line in formats.source_lines(source) if line.strip())
        else:
            count += sum(1 for _ in formats.source_records(source))
    if not count:
        raise DatasetError("no data rows found; add at least one row", file=" + ".join(names))
    return count


def dataset_describe_file(paths, *, names: list[str] | None = None, mapping: dict | None = None,
                          schema: str | None = None, allow_bad_rows: bool = True) -> dict:
    """The Dataset fields that describe the data at ``paths`` (one path, or several read as one), after a
    full streaming check. ``mapping``/``schema`` (confirmed by the user) make the data usable whatever was
    detected. Raises DatasetError naming the file, row and field."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    names = names or [p.name for p in paths]
    info = formats.describe(paths, names=names)
    detection = detect(paths, names=names)
    chosen = schema or detection.schema
    # Usable at once only when nothing is left to confirm: a sure schema, and one file the trainer reads.
    usable = bool(chosen) and (schema is not None or (detection.confidence == "sure" and len(info.files) == 1))
    fields = dict(format=info.format, encoding=info.encoding, detected_schema=detection.schema,
                  schema_confidence="sure" if detection.confidence == "sure" else "unsure",
                  columns=list(detection.columns), sha256=file_sha256(paths[0] if len(paths) == 1 else paths),
                  source_files=[{"name": s.name, "format": s.format, "encoding": s.encoding,
                                 "size_bytes": s.size_bytes} for s in info.sources],
                  size_bytes=sum(p.stat().st_size for p in paths), labels=[])
    if not usable:
        # Stored anyway: the user maps the columns on the dataset page. Until then every record is still
        # read (so a broken file is refused now, naming the row) and shown raw.
        return {**fields, "row_count": _count_rows(paths, names), "preview": _raw_preview(paths, names),
                "schema": chosen or "", "tasks": [], "confirmed": False, "column_mapping": dict(detection.mapping)}
    tasks = [task for task in tasks_for_schema(chosen) if task in TRAINABLE] or list(tasks_for_schema(chosen))
    try:
        summary = summarize(paths[0] if len(paths) == 1 else paths, name=names[0] if len(names) == 1 else None,
                            task=tasks[0], schema=chosen, mapping=mapping or None)
    except DatasetError as exc:
        if not allow_bad_rows:
            raise
        # Refused outright only if the file itself is broken (a record that does not parse). A row that
        # parses but cannot be trained on (an empty reply, turns out of order) is kept, so the page can list
        # every such row and drop them in one click rather than have the user fix the file by hand.
        row_count = _count_rows(paths, names)
        return {**fields, "row_count": row_count, "preview": _raw_preview(paths, names), "schema": chosen,
                "tasks": tasks, "confirmed": True, "problem": str(exc), "column_mapping": dict(detection.mapping)}
    return {**fields, "row_count": summary.row_count, "schema": summary.schema or chosen, "tasks": tasks,
            "labels": list(summary.labels), "confirmed": True, "problem": "",
            "preview": [dataclasses.asdict(row) for row in summary.preview],
            "column_mapping": dict(mapping or detection.mapping)}


def dataset_store_file(*, dataset: Dataset, source_path, filename: str) -> Dataset:
    """Save ``dataset`` with a copy (or, for a temporary upload, the moved file) of ``source_path``; never
    leaves a stored file without its row."""
    with open(source_path, "rb") as handle:
        dataset.file.save(filename, File(handle, name=filename), save=False)
    try:
        with transaction.atomic():
            dataset.save()
    except Exception:
        Path(dataset.file.path).unlink(missing_ok=True)
        raise
    return dataset


def _store_uploads(dataset: Dataset, uploads: list, filenames: list[str]) -> None:
    """Move the uploaded temporary files into storage (a rename where possible, not a 1 GB copy) and
    note where the second and later files went; then save the row."""
    stored = []
    try:
        for index, (upload, filename) in enumerate(zip(uploads, filenames)):
            upload.name = filename
            if index == 0:
                dataset.file.save(filename, upload, save=False)
                stored.append(dataset.file.name)
            else:
                stored.append(default_storage.save(dataset_upload_path(dataset, filename), upload))
        for entry, name in zip(dataset.source_files, _per_upload(dataset.source_files, filenames, stored)):
            entry["stored"] = name
        with transaction.atomic():
            dataset.save()
    except Exception:
        for name in stored:
            default_storage.delete(name)
        raise


def _per_upload(sources: list[dict], filenames: list[str], stored: list[str]) -> list[str]:
    """The stored upload each source came from (a zip's members all come from the zip)."""
    out = []
    for entry in sources:
        top = entry["name"].split("/", 1)[0] if entry["name"] not in filenames else entry["name"]
        out.append(stored[filenames.index(top)] if top in filenames else stored[0])
    return out


def _upload_path(upload) -> str:
    if hasattr(upload, "temporary_file_path"):
        return upload.temporary_file_path()
    # In memory (a small file under another upload handler, or a test): put it on disk to read it.
    tmp = tempfile.NamedTemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR, suffix=Path(upload.name).suffix,
                                      delete=False)
    with tmp:
        for chunk in upload.chunks():
            tmp.write(chunk)
    upload.spooled_copy = tmp.name
    return tmp.name


def dataset_create_from_uploads(*, team, user, uploads: list, name: str = "") -> Dataset:
    """Check the uploaded files as one dataset and store them as version 1.

    Raises DatasetError (naming the file, row and field) and stores nothing if any row cannot be read.
    """
    filenames = _unique([safe_filename(upload.name) for upload in uploads])
    if refusal := storage_quota_refusal(team_id=team.pk, adding_bytes=sum(upload.size for upload in uploads)):
        raise DatasetError(refusal)
    try:
        paths = [_upload_path(upload) for upload in uploads]
        for path, filename in zip(paths, filenames):
            formats.detect_format(filename, path)
        described = dataset_describe_file(paths, names=filenames)
        dataset = Dataset(team=team, created_by=user, name=(name or Path(filenames[0]).stem)[:200], **described)
        _store_uploads(dataset, uploads, filenames)
    finally:
        for upload in uploads:
            if getattr(upload, "spooled_copy", None):
                Path(upload.spooled_copy).unlink(missing_ok=True)
    return dataset


def _unique(filenames: list[str]) -> list[str]:
    """Two uploaded files of one name would overwrite each other in storage; number the later ones."""
    seen, out = set(), []
    for filename in filenames:
        stem, suffix, candidate, n = Path(filename).stem, Path(filename).suffix, filename, 1
        while candidate in seen:
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        seen.add(candidate)
        out.append(candidate)
    return out


def dataset_create_from_file(*, team, user, source_path: str | Path, filename: str, name: str = "") -> Dataset:
    """Check a file already on disk and store a copy as version 1 (first-run set-up, scripts)."""
    filename = safe_filename(filename)
    formats.detect_format(filename, source_path)
    described = dataset_describe_file([source_path], names=[filename])
    dataset = Dataset(team=team, created_by=user, name=(name or Path(filename).stem)[:200], **described)
    return dataset_store_file(dataset=dataset, source_path=source_path, filename=filename)


def dataset_copy_sample(*, team, user, sample_path: Path) -> Dataset:
    """Register a sample file once per team (used by first-run set-up)."""
    existing = Dataset.objects.filter(team=team, name=sample_path.stem).first()
    return existing or dataset_create_from_file(team=team, user=user, source_path=sample_path,
                                                filename=sample_path.name)
