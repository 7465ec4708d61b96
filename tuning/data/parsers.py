"""Records from files, one parser per file format (JSONL, JSON, CSV/TSV,
Parquet); ``formats.FILE_FORMATS`` says which parser reads which format.

Each parser takes a ``sources.Source`` and yields ``SourceRow`` one at a
time: a JSON array is decoded one element at a time, Parquet one record
batch at a time, so memory stays flat whatever the file's size. Every
problem is a DatasetError naming the file, the row (the line for JSONL, the
data row after the header for CSV/TSV, the element for a JSON array, the
record for Parquet) and the field. pyarrow is imported only when a Parquet
file is read.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuning.data import sources
from tuning.data.sources import Source, SourceRow
from tuning.errors import DatasetError

__all__ = ["jsonl_records", "json_records", "csv_records", "tsv_records", "parquet_records"]


# csv refuses values over 128 KiB by default; a pre-training document can be
# longer. The limit is process-wide, so it is only ever raised (to 64 MiB);
# sources.MAX_LINE_BYTES is the cap this module applies itself.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))
READ_CHUNK = 1 << 16  # characters read at a time from a JSON array
PARQUET_BATCH = 1024  # Parquet records decoded at a time


def json_records(source: Source) -> Iterator[SourceRow]:
    """A .json file: one array of objects, or (as some exports write it) one object per line."""
    yield from (_json_array_records(source) if _first_char(source) == "[" else jsonl_records(source))


def _first_char(source: Source) -> str:
    # From the raw start, not a line: a JSON array is often one line longer than any line cap.
    with sources.reading(source.name), source.open() as handle:
        head = handle.read(sources.SNIFF_BYTES)
    encoding, bom = sources.detect_encoding(head, source.name)
    return head[bom:].decode(sources.CODECS.get(encoding, encoding), errors="ignore").lstrip()[:1]


def jsonl_records(source: Source) -> Iterator[SourceRow]:
    for number, line in sources.source_lines(source):
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
            with sources.reading(self.name, self.line):
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
    encoding, bom = sources.text_encoding(source)
    with sources.reading(source.name), source.open() as handle:
        handle.read(bom)
        stream = _JsonStream(io.TextIOWrapper(handle, encoding=sources.CODECS.get(encoding, encoding), newline=""),
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
            if len(stream.buffer) - stream.pos > sources.MAX_LINE_BYTES:
                raise DatasetError(f"element {row} (line {stream.line}) is longer than {sources.size_limit()} "
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
        if end - stream.pos > sources.MAX_LINE_BYTES:
            raise DatasetError(f"element {row} (line {stream.line}) is longer than {sources.size_limit()}"
                               f"; split it into several rows", file=name, row=row)
        stream.advance(end - stream.pos)
        return value


def csv_records(source: Source) -> Iterator[SourceRow]:
    yield from _delimited_records(source, "excel", "commas")


def tsv_records(source: Source) -> Iterator[SourceRow]:
    yield from _delimited_records(source, "excel-tab", "tabs")


def _delimited_records(source: Source, dialect: str, separators: str) -> Iterator[SourceRow]:
    lines = sources.source_lines(source)
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
                               f"{separators}", file=source.name, row=row)
        for column, value in zip(header, values):
            if len(value) > sources.MAX_LINE_BYTES:
                raise DatasetError(f"the value is longer than {sources.size_limit()}; split it", file=source.name,
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
        with sources.reading(source.name), source.open() as handle:
            shutil.copyfileobj(handle, copy, 1 << 20)  # at most member.file_size bytes: zipfile stops there
        copy.flush()
        yield Path(copy.name)


def parquet_records(source: Source) -> Iterator[SourceRow]:
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
                        if isinstance(value, (str, bytes)) and len(value) > sources.MAX_LINE_BYTES:
                            raise DatasetError(f"the value is longer than {sources.size_limit()}; split it",
                                               file=source.name, row=row, field=column)
                    yield SourceRow(record, source.name, row)
        except errors as exc:
            raise DatasetError(f"not a readable Parquet file ({type(exc).__name__}: {exc}); export it again",
                               file=source.name, row=row + 1 if row else None) from None


