"""Rows of a dataset, as the task readers (``readers`` for SFT, ``pretrain``,
``classify``, ``preference``) consume them, and the summary the upload page
shows.

The formats themselves (JSONL, JSON, CSV, TSV, Parquet, text, zip; encoding
detection; streaming) are in ``formats``; which schema the rows follow is
``schema``'s, which imports this module (never the other way). A dataset is one path, or a list
of paths read as one. Pure Python, no torch: the web process validates
uploads with it. Every problem names the file, the row (1-based: the line
for JSONL, the data row after the header for CSV) and the field, and says
what to do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning.data import formats
from tuning.data.formats import SourceRow
from tuning.errors import DatasetError

FORMATS = formats.FORMATS
NO_ROWS = "no data rows found; add at least one row"
PathLike = str | Path
Paths = PathLike | Sequence[PathLike]


@dataclass(frozen=True)
class DatasetSummary:
    """What the upload page shows. ``preview`` holds dataclasses (serialise
    with ``dataclasses.asdict``); their type depends on the task. Only
    counts and the preview rows are kept, whatever the file's size."""

    format: str  # formats.FORMATS, or "mixed" for several files of different formats
    row_count: int
    columns: tuple[str, ...]
    preview: tuple
    sha256: str
    schema: str = ""  # schema.SCHEMAS: alpaca, prompt_completion, chat, sharegpt, text, text+label, preference
    labels: tuple[str, ...] = field(default=())  # classification only, in label-id order
    encoding: str = ""  # detected text encoding(s), e.g. "utf-8", "utf-16-le", "latin-1"
    files: tuple[str, ...] = ()  # the files read, zip members as "archive.zip/member"
    sources: tuple = ()  # formats.SourceInfo per file read: name, format, encoding, size_bytes
    detection: Any = None  # schema.Detection: the detected schema, for the UI to confirm or map


def dataset_files(path: Paths, name: str | None = None) -> tuple[list[Path], list[str], str]:
    """(paths, their names for messages, one name for the whole dataset)."""
    if isinstance(path, (str, Path)):
        label = name or Path(path).name
        return [Path(path)], [label], label
    paths = [Path(p) for p in path]
    names = [p.name for p in paths]
    return paths, names, name or " + ".join(names)


def detect_format(name: str) -> str:
    """The format from a file name: one of ``FORMATS``, or DatasetError."""
    return formats.detect_format(name)


def read_all(rows: Iterable, name: str) -> list:
    """Every row a reader yields, or DatasetError when there is none."""
    rows = list(rows)
    if not rows:
        raise DatasetError(NO_ROWS, file=name)
    return rows


def summarize_rows(path: Paths, name: str, rows: Iterable, *, schema: str, detection, preview_rows: int,
                   preview: Callable = lambda row: row) -> DatasetSummary:
    """Count ``rows`` (read and checked by a task's reader, one at a time) and
    keep ``preview(row)`` of the first few: memory stays flat for any size.
    Format and encoding are read from the files' starts once every row has
    passed, so a bad row is the error reported; ``detection`` is the
    schema.Detection the rows were read by."""
    kept, count = [], 0
    for row in rows:
        count += 1
        if len(kept) < preview_rows:
            kept.append(preview(row))
    if not count:
        raise DatasetError(NO_ROWS, file=name)
    paths, names, _ = dataset_files(path, name)
    info = formats.describe(paths, names=names)
    return DatasetSummary(format=info.format, row_count=count, preview=tuple(kept), sha256=file_sha256(path),
                          columns=detection.columns, schema=schema, encoding=info.encoding, files=info.files,
                          sources=info.sources, detection=detection)


def file_sha256(path: Paths) -> str:
    """sha256 of the file; for several files, of their digests in order."""
    if not isinstance(path, (str, Path)):
        return hashlib.sha256("\n".join(file_sha256(p) for p in path).encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def iter_lines(path: PathLike, name: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line with its ending) for every line of one text file."""
    yield from formats.source_lines(formats.Source(name, formats.detect_format(name, path), Path(path)))


def iter_source_rows(path: Paths, name: str | None = None) -> Iterator[SourceRow]:
    """Every record of the dataset (zip members and several files in order), with its file and row."""
    paths, names, _ = dataset_files(path, name)
    yield from formats.iter_rows(paths, names=names)


def iter_records(path: Paths, name: str | None = None) -> Iterator[tuple[int, dict]]:
    """(row, record) for every record; CSV values are strings."""
    for row in iter_source_rows(path, name):
        yield row.row, row.data


def record_columns(path: Paths, name: str | None = None) -> tuple[str, ...]:
    """The column names: the CSV header, or the keys of the first record."""
    for _, record in iter_records(path, name):
        return tuple(record)
    return ()


def pick_column(keys: tuple[str, ...], columns: Iterable[str]) -> str | None:
    """The first of ``keys`` present among ``columns``, matched case- and space-insensitively."""
    lowered = {column.strip().lower(): column for column in columns}
    return next((lowered[key] for key in keys if key in lowered), None)


def require_column(keys: tuple[str, ...], columns: Iterable[str], name: str, *, row: int | None = None,
                   hint: str = "") -> str:
    columns = tuple(columns)
    found = pick_column(keys, columns)
    if found is None:
        aliases = f" (or {', '.join(keys[1:])})" if len(keys) > 1 else ""
        listed = ", ".join(sorted(columns)) or "none"
        raise DatasetError(f"missing the {keys[0]}{aliases} column; found columns: {listed}. "
                           f"{hint or f'Rename a column to {keys[0]}'}", file=name, row=row, field=keys[0])
    return found


def mapped_column(mapping: dict[str, str] | None, *fields: str) -> str | None:
    """The column a mapping ({canonical field: column}) gives for the first of ``fields`` it maps."""
    return next((mapping[f] for f in fields if mapping and f in mapping), None)


def resolve_column(fields: tuple[str, ...], keys: tuple[str, ...], columns: Iterable[str], name: str, *,
                   mapping: dict[str, str] | None = None, row: int | None = None, hint: str = "") -> str:
    """The column holding canonical field ``fields[0]`` (``fields`` are its
    names in any schema): where the user's mapping says, else the first of
    ``keys`` present."""
    columns = tuple(columns)
    column = mapped_column(mapping, *fields)
    if column is None:
        return require_column(keys, columns, name, row=row, hint=hint)
    if column not in columns:
        raise DatasetError(f"the column mapping reads {fields[0]} from column {column!r}, which this file does not "
                           f"have; choose one of: {', '.join(columns) or 'none'}", file=name, row=row, field=fields[0])
    return column


def text_value(record: dict, key: str, name: str, row: int, *, field: str | None = None) -> str:
    """``record[key]`` as non-blank text, or a DatasetError saying what is wrong with it."""
    value = record.get(key)
    if isinstance(value, str) and value.strip():
        return value
    problem = "is missing" if value is None else ("must be text" if not isinstance(value, str) else "is empty")
    raise DatasetError(f"{problem}; fill it in or remove the row", file=name, row=row, field=field or key)


def _turn_text(turn) -> str:
    """One chat turn as "speaker: text", whichever spelling the file uses (role/content or from/value)."""
    if not isinstance(turn, dict):
        return readable_value(turn)
    speaker = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if isinstance(speaker, str) and (content is None or isinstance(content, str)):
        return f"{speaker}: {content or ''}"
    return readable_value(turn)


def readable_value(value, limit: int | None = None) -> str:
    """A cell or a row as a person reads it, not as JSON: a conversation is one "speaker: text" line per
    turn, an object "key: value" lines; cut at ``limit`` characters (at a space where one is near) with
    an ellipsis, so the cut shows."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, list):
        text = "\n".join(_turn_text(item) for item in value)
    elif isinstance(value, dict):
        text = "\n".join(f"{key}: {readable_value(item)}" for key, item in value.items())
    elif value is None:
        text = ""
    else:
        text = str(value)
    if limit is None or len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit * 0.8 else cut).rstrip() + " …"
