"""Rows of a dataset, as the task readers (``readers`` for SFT, ``pretrain``,
``classify``, ``preference``) consume them, and the summary the upload page
shows.

The formats themselves (JSONL, JSON, CSV, TSV, Parquet, text, zip; encoding
detection; streaming) are in ``formats``. A dataset is one path, or a list
of paths read as one. Pure Python, no torch: the web process validates
uploads with it. Every problem names the file, the row (1-based: the line
for JSONL, the data row after the header for CSV) and the field, and says
what to do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
import tempfile
from contextlib import contextmanager
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tuning.data import formats
from tuning.data.formats import Source, SourceRow
from tuning.data.schema import Detection, detect, mapped_column
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
    detection: Detection | None = None  # the detected schema, for the UI to confirm or map


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


def summarize_rows(path: Paths, name: str, rows: Iterable, *, schema: str, preview_rows: int,
                   preview: Callable = lambda row: row) -> DatasetSummary:
    """Count ``rows`` (read and checked by a task's reader, one at a time) and
    keep ``preview(row)`` of the first few: memory stays flat for any size.
    Format, encoding and the detected schema are read from the files'
    starts once every row has passed, so a bad row is the error reported."""
    kept, count = [], 0
    for row in rows:
        count += 1
        if len(kept) < preview_rows:
            kept.append(preview(row))
    if not count:
        raise DatasetError(NO_ROWS, file=name)
    paths, names, _ = dataset_files(path, name)
    info = formats.describe(paths, names=names)
    detection = detect(paths, names=names)
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


# --- records, per format -------------------------------------------------------
# Lines, encodings and zip members come from ``formats``; here they become records.

# csv refuses values over 128 KiB by default; a pre-training document can be
# longer. The limit is process-wide, so it is only ever raised (to 64 MiB);
# formats.MAX_LINE_BYTES is the cap this module applies itself.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))
READ_CHUNK = 1 << 16  # characters read at a time from a JSON array
PARQUET_BATCH = 1024  # Parquet records decoded at a time


def source_records(source: Source) -> Iterator[SourceRow]:
    """Every record of a JSONL, JSON, CSV, TSV or Parquet source."""
    if source.format == "text":
        raise DatasetError("plain text has no columns; upload .jsonl, .json, .csv, .tsv or .parquet for this task",
                           file=source.name)
    if source.format == "parquet":
        yield from _parquet_records(source)
    elif source.format in ("csv", "tsv"):
        yield from _csv_records(source)
    elif source.format == "json" and _first_char(source) == "[":
        yield from _json_array_records(source)
    else:  # JSONL, or a .json file that holds one object per line
        yield from _jsonl_records(source)


def _first_char(source: Source) -> str:
    # From the raw start, not a line: a JSON array is often one line longer than any line cap.
    with formats.reading(source.name), source.open() as handle:
        head = handle.read(formats.SNIFF_BYTES)
    encoding, bom = formats.detect_encoding(head, source.name)
    return head[bom:].decode(formats.CODECS.get(encoding, encoding), errors="ignore").lstrip()[:1]


def _jsonl_records(source: Source) -> Iterator[SourceRow]:
    for number, line in formats.source_lines(source):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            shape = ("a .json file must hold one array of objects [{...}, {...}] or one object per line"
                     if source.format == "json" else "each line must be one JSON object")
            raise DatasetError(f"invalid JSON ({exc.msg} at column {exc.colno}); {shape}", file=source.name,
                               row=number) from None
        except (ValueError, RecursionError) as exc:  # a number over 4300 digits; nesting deeper than Python's stack
            raise DatasetError(f"JSON that cannot be read ({str(exc) or type(exc).__name__}); simplify the row",
                               file=source.name, row=number) from None
        if not isinstance(record, dict):
            raise DatasetError("each line must be a JSON object like {\"instruction\": ..., \"output\": ...}",
                               file=source.name, row=number)
        yield SourceRow(record, source.name, number, number)


class _JsonStream:
    """A window onto decoded text that grows as needed, counting lines as it moves on."""

    def __init__(self, text, name: str):
        self.text, self.name = text, name
        self.buffer, self.pos, self.line, self.eof = "", 0, 1, False

    def more(self) -> bool:
        if self.eof:
            return False
        # Read at least as much as is held, so a long element is re-parsed O(log n) times, not O(n).
        try:
            with formats.reading(self.name, self.line):
                chunk = self.text.read(max(READ_CHUNK, len(self.buffer) - self.pos))
        except UnicodeDecodeError as exc:
            raise DatasetError(f"not valid {exc.encoding.upper()} text near line {self.line}; save the file as "
                               f"UTF-8", file=self.name) from None
        self.buffer, self.pos = self.buffer[self.pos:] + chunk, 0
        self.eof = not chunk
        return bool(chunk)

    def peek(self) -> str:
        while self.pos >= len(self.buffer):
            if not self.more():
                return ""
        return self.buffer[self.pos]

    def advance(self, count: int) -> None:
        self.line += self.buffer.count("\n", self.pos, self.pos + count)
        self.pos += count

    def skip_space(self) -> None:
        while self.peek() in (" ", "\t", "\r", "\n"):
            self.advance(1)


def _json_array_records(source: Source) -> Iterator[SourceRow]:
    decoder = json.JSONDecoder()
    with formats.reading(source.name), source.open() as handle:
        encoding, bom = formats.detect_encoding(handle.read(formats.SNIFF_BYTES), source.name)
    with formats.reading(source.name), source.open() as handle:
        handle.read(bom)
        stream = _JsonStream(io.TextIOWrapper(handle, encoding=formats.CODECS.get(encoding, encoding), newline=""),
                             source.name)
        stream.skip_space()
        stream.advance(1)  # the "[" (checked by the caller)
        stream.skip_space()
        if stream.peek() == "]":
            return
        row = 0
        while True:
            stream.skip_space()
            row, line = row + 1, stream.line
            value = _json_value(stream, decoder, source.name, row)
            if not isinstance(value, dict):
                raise DatasetError(f"element {row} (line {line}) is {type(value).__name__}, not an object; each "
                                   f"element must be like {{\"instruction\": ..., \"output\": ...}}",
                                   file=source.name, row=row)
            yield SourceRow(value, source.name, row, line)
            stream.skip_space()
            after = stream.peek()
            if after == "]":
                break
            if after != ",":
                problem = "the file ends before the array is closed" if not after else f"found {after!r}"
                raise DatasetError(f"expected ',' or ']' after element {row} (line {stream.line}): {problem}; "
                                   f"fix the JSON (was the file cut short?)", file=source.name, row=row)
            stream.advance(1)
        stream.advance(1)
        stream.skip_space()
        if stream.peek():
            raise DatasetError(f"extra text after the closing ']' (line {stream.line}); a .json file holds one "
                               f"array", file=source.name, row=row)


def _json_value(stream: _JsonStream, decoder: json.JSONDecoder, name: str, row: int):
    while True:
        try:
            value, end = decoder.raw_decode(stream.buffer, stream.pos)
        except json.JSONDecodeError as exc:
            if len(stream.buffer) - stream.pos > formats.MAX_LINE_BYTES:
                raise DatasetError(f"element {row} (line {stream.line}) is longer than {formats.size_limit()} "
                                   f"or never ends; split it or fix the JSON", file=name, row=row) from None
            if stream.more():
                continue  # the element may go on in the next chunk
            line = stream.line + stream.buffer.count("\n", stream.pos, exc.pos)
            raise DatasetError(f"invalid JSON ({exc.msg}, line {line}); fix element {row} (was the file cut short?)",
                               file=name, row=row) from None
        except (ValueError, RecursionError) as exc:
            raise DatasetError(f"JSON that cannot be read ({str(exc) or type(exc).__name__}); simplify element {row}",
                               file=name, row=row) from None
        if end == len(stream.buffer) and not isinstance(value, (dict, list, str)) and stream.more():
            continue  # a number or literal cut by the chunk boundary: read on and decode it whole
        if end - stream.pos > formats.MAX_LINE_BYTES:
            raise DatasetError(f"element {row} (line {stream.line}) is longer than {formats.size_limit()}"
                               f"; split it into several rows", file=name, row=row)
        stream.advance(end - stream.pos)
        return value


def _csv_records(source: Source) -> Iterator[SourceRow]:
    dialect = "excel-tab" if source.format == "tsv" else "excel"
    lines = formats.source_lines(source)
    line_at = [0]

    def feed():
        for number, line in lines:
            line_at[0] = number
            yield line

    # csv.reader pulls further lines itself for quoted values that span lines.
    reader = csv.reader(feed(), dialect=dialect)
    header, row = None, 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(f"CSV cannot be parsed ({exc}, line {line_at[0]}); quote values that hold quotes or "
                               f"line breaks", file=source.name, row=row + 1) from None
        except DatasetError as exc:
            if exc.row is None:
                raise
            # A decoding error names the physical line; the row is the data row it falls in.
            raise DatasetError(exc.reason, file=source.name, row=row + 1) from None
        if not any(value.strip() for value in values):
            continue  # blank line
        if header is None:
            header = [value.strip() for value in values]
            repeated = sorted({column for column in header if header.count(column) > 1})
            if repeated:
                raise DatasetError(f"the header names {', '.join(repeated) or 'an empty column'} more than once; "
                                   f"give every column its own name", file=source.name, row=None,
                                   field=repeated[0])
            continue
        row += 1
        if len(values) != len(header):
            raise DatasetError(f"has {len(values)} value{'s' * (len(values) != 1)} but the header has "
                               f"{len(header)} columns; quote values that contain "
                               f"{'tabs' if source.format == 'tsv' else 'commas'}", file=source.name, row=row)
        for column, value in zip(header, values):
            if len(value) > formats.MAX_LINE_BYTES:
                raise DatasetError(f"the value is longer than {formats.size_limit()}; split it", file=source.name,
                                   row=row, field=column)
        yield SourceRow(dict(zip(header, values)), source.name, row, line_at[0])


@contextmanager
def _local_path(source: Source):
    """A path pyarrow can seek in: the file itself, or a zip member copied to a temporary file
    (seeking backwards in a compressed member would decompress it again each time)."""
    if source.member is None:
        yield source.path
        return
    with tempfile.NamedTemporaryFile(suffix=".parquet") as copy:
        with formats.reading(source.name), source.open() as handle:
            shutil.copyfileobj(handle, copy, 1 << 20)  # at most member.file_size bytes: zipfile stops there
        copy.flush()
        yield Path(copy.name)


def _parquet_records(source: Source) -> Iterator[SourceRow]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError("reading Parquet needs the pyarrow package, which this server lacks; ask an admin to "
                           "install it, or upload JSONL", file=source.name) from None
    errors = (pa.ArrowException, ValueError, OSError, TypeError)
    with _local_path(source) as path:
        row = 0
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH)
            for batch in batches:
                for record in batch.to_pylist():
                    row += 1
                    for column, value in record.items():
                        if isinstance(value, (str, bytes)) and len(value) > formats.MAX_LINE_BYTES:
                            raise DatasetError(f"the value is longer than {formats.size_limit()}; split it",
                                               file=source.name, row=row, field=column)
                    yield SourceRow(record, source.name, row)
        except errors as exc:
            raise DatasetError(f"not a readable Parquet file ({type(exc).__name__}: {exc}); export it again",
                               file=source.name, row=row + 1 if row else None) from None


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
