"""Reading rows from JSONL and CSV files, and lines from plain text, checking
encoding and structure as they stream by.

Shared by the task readers (``readers`` for SFT, ``pretrain``, ``classify``).
Pure Python, no torch: the web process validates uploads with it. Files are
read line by line, so a large upload is checked without holding it in
memory. Every problem names the file, the row (1-based: the line for JSONL,
the data row after the header for CSV) and the field, and says what to do.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tuning.errors import DatasetError

FORMATS = ("jsonl", "csv", "text")
NO_ROWS = "no data rows found; add at least one row"
SNIFF_BYTES = 8192  # how much of the start of a file is checked for binary content
# csv refuses values over 128 KiB by default; a pre-training document can be
# longer. The limit is process-wide, so it is only ever raised (to 64 MiB).
csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))


@dataclass(frozen=True)
class DatasetSummary:
    """What the upload page shows. ``preview`` holds dataclasses (serialise
    with ``dataclasses.asdict``); their type depends on the task."""

    format: str
    row_count: int
    columns: tuple[str, ...]
    preview: tuple
    sha256: str
    schema: str = ""  # alpaca, chat, sharegpt, text or text+label
    labels: tuple[str, ...] = field(default=())  # classification only, in label-id order


def detect_format(name: str) -> str:
    suffix = Path(name).suffix.lower().lstrip(".")
    if suffix in ("jsonl", "ndjson"):
        return "jsonl"
    if suffix in ("csv", "tsv"):
        return "csv"
    if suffix in ("txt", "text", "md"):
        return "text"
    raise DatasetError(f"unsupported file type '.{suffix}'; upload a .jsonl, .csv or .txt file", file=name)


def read_all(rows: Iterable, name: str) -> list:
    """Every row a reader yields, or DatasetError when there is none."""
    rows = list(rows)
    if not rows:
        raise DatasetError(NO_ROWS, file=name)
    return rows


def summarize_rows(path: str | Path, name: str, rows: Iterable, *, schema: str, preview_rows: int,
                   preview: Callable = lambda row: row) -> DatasetSummary:
    """Count ``rows`` (read and checked by a task's reader, one at a time) and
    keep ``preview(row)`` of the first few."""
    kept, count = [], 0
    for row in rows:
        count += 1
        if len(kept) < preview_rows:
            kept.append(preview(row))
    if not count:
        raise DatasetError(NO_ROWS, file=name)
    file_format = detect_format(name)
    return DatasetSummary(format=file_format, row_count=count, preview=tuple(kept), sha256=file_sha256(path),
                          columns=() if file_format == "text" else record_columns(path, name), schema=schema)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def iter_lines(path: Path, name: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line with its ending) for every line.

    Decoding line by line gives the exact line of a bad byte. An empty or
    whitespace-only file is refused here so that every reader says the same.
    """
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
        if b"\x00" in head:
            raise DatasetError("this looks like a binary file, not text; upload JSONL, CSV or plain text",
                               file=name)
        handle.seek(0)
        seen_text = False
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # the UTF-8 byte-order mark some editors write
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(f"not valid UTF-8 text (line {number}, byte {exc.start + 1}); save the file "
                                   f"as UTF-8", file=name, row=number) from None
            seen_text = seen_text or bool(line.strip())
            yield number, line
    if not seen_text:
        raise DatasetError("the file is empty; upload a file with at least one row", file=name)


def iter_records(path: str | Path, name: str) -> Iterator[tuple[int, dict]]:
    """(row, record) for every row of a JSONL or CSV file; CSV values are strings."""
    file_format = detect_format(name)
    if file_format == "text":
        raise DatasetError("plain text has no columns; upload a .jsonl or .csv file for this task", file=name)
    lines = iter_lines(Path(path), name)
    yield from (_jsonl_records(lines, name) if file_format == "jsonl" else _csv_records(lines, name))


def record_columns(path: str | Path, name: str) -> tuple[str, ...]:
    """The column names: the CSV header, or the keys of the first JSONL object."""
    for _, record in iter_records(path, name):
        return tuple(record)
    return ()


def _jsonl_records(lines: Iterable[tuple[int, str]], name: str) -> Iterator[tuple[int, dict]]:
    for number, line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"invalid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON "
                               f"object", file=name, row=number) from None
        except (ValueError, RecursionError) as exc:  # a number over 4300 digits; nesting deeper than Python's stack
            raise DatasetError(f"JSON that cannot be read ({str(exc) or type(exc).__name__}); simplify the row",
                               file=name, row=number) from None
        if not isinstance(record, dict):
            raise DatasetError("each line must be a JSON object like {\"instruction\": ..., \"output\": ...}",
                               file=name, row=number)
        yield number, record


def _csv_records(lines: Iterable[tuple[int, str]], name: str) -> Iterator[tuple[int, dict]]:
    dialect = "excel-tab" if name.lower().endswith(".tsv") else "excel"
    # csv.reader pulls further lines itself for quoted values that span lines.
    reader = csv.reader((line for _, line in lines), dialect=dialect)
    header, row_number = None, 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(f"CSV cannot be parsed: {exc}", file=name, row=row_number + 1) from None
        except DatasetError as exc:
            if exc.row is None:
                raise
            # A decoding error names the physical line; the row is the data row it falls in.
            raise DatasetError(exc.reason, file=name, row=row_number + 1) from None
        if not any(value.strip() for value in values):
            continue  # blank line
        if header is None:
            header = values
            continue
        row_number += 1
        if len(values) != len(header):
            raise DatasetError(f"has {len(values)} value{'s' * (len(values) != 1)} but the header has "
                               f"{len(header)} columns; quote values that contain commas", file=name, row=row_number)
        yield row_number, dict(zip(header, values))


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


def text_value(record: dict, key: str, name: str, row: int, *, field: str | None = None) -> str:
    """``record[key]`` as non-blank text, or a DatasetError saying what is wrong with it."""
    value = record.get(key)
    if isinstance(value, str) and value.strip():
        return value
    problem = "is missing" if value is None else ("must be text" if not isinstance(value, str) else "is empty")
    raise DatasetError(f"{problem}; fill it in or remove the row", file=name, row=row, field=field or key)
