"""File formats: JSONL, JSON arrays, CSV, TSV, Parquet, plain text, and a
.zip of these; one file or several forming one dataset.

Everything streams: lines are read one at a time (each capped at
``MAX_LINE_BYTES``), a JSON array is decoded one element at a time, Parquet
one record batch at a time and zip members are decompressed as they are
read, so a 1 GB upload is checked holding only the current row. A zip member
is named ``archive.zip/member.jsonl`` in every message.

Text encodings are detected per file: a byte-order mark (UTF-8, UTF-16 or
UTF-32), else strict UTF-8 on the first ``SNIFF_BYTES``, else Latin-1.
Latin-1 is the last resort because every byte sequence decodes as Latin-1:
it never fails, so it proves nothing and must only be tried once UTF-8 has
been ruled out; it is, though, what spreadsheet exports in Western Europe
most often are when they are not UTF-8.

Every problem is a DatasetError naming the file, the row (1-based: the line
for JSONL and text, the data row after the header for CSV/TSV, the element
for a JSON array, the record for Parquet) and the field, and saying what to
do. Pure Python; pyarrow is imported only when a Parquet file is read.
"""

from __future__ import annotations

import codecs
import io
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tuning.errors import DatasetError

__all__ = ["FORMATS", "Source", "SourceRow", "SourceInfo", "FileInfo", "detect_format", "detect_encoding",
           "iter_sources",
           "source_lines", "source_records", "source_encoding", "iter_rows", "describe", "scan", "Scan", "count_lines"]

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet", "text", "zip")
EXTENSIONS = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "json", "csv": "csv", "tsv": "tsv", "tab": "tsv",
              "parquet": "parquet", "pq": "parquet", "txt": "text", "text": "text", "md": "text", "zip": "zip"}
UPLOAD_HINT = "upload .jsonl, .json, .csv, .tsv, .parquet, .txt/.md, or a .zip of these"
SNIFF_BYTES = 64 * 1024  # how much of a file decides its encoding (and whether it is binary)
MAX_LINE_BYTES = 32 << 20  # one line, CSV value or JSON element; longer is almost surely not a row
MAX_MEMBERS = 1000  # files in one zip (each open re-reads the archive's directory)
MAX_ARCHIVE_BYTES = 16 << 30  # uncompressed total of a zip (bytes)
MAX_RATIO = 200  # uncompressed/compressed size of one member; text rarely beats 20, zip bombs reach 1000+
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
CODECS = {"utf-8-sig": "utf-8"}  # the BOM is skipped before decoding, so decode the rest as plain UTF-8
BINARY = "this looks like a binary file, not text; " + UPLOAD_HINT
# Errors a damaged archive or file raises while it is being read.
READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


@dataclass(frozen=True)
class Source:
    """One file of a dataset: a file on disk, or a member of a zip archive."""

    name: str  # what messages call it: "data.jsonl" or "data.zip/part-1.jsonl"
    format: str  # one of FORMATS except zip
    path: Path  # the file on disk (the archive, for a member)
    member: zipfile.ZipInfo | None = None

    def open(self) -> BinaryIO:
        if self.member is None:
            return open(self.path, "rb")
        archive = zipfile.ZipFile(self.path)
        try:
            return archive.open(self.member)
        finally:
            archive.close()  # the member's handle keeps the file open until it is closed (zipfile counts users)


@dataclass(frozen=True)
class SourceRow:
    """A record and where it came from."""

    data: dict
    file: str  # Source.name
    row: int  # 1-based (see the module docstring)
    line: int | None = None  # 1-based line it starts on, where the format has lines


@dataclass(frozen=True)
class SourceInfo:
    name: str  # Source.name
    format: str
    encoding: str  # "utf-8", "utf-8-sig" (with BOM), "utf-16-le", "utf-16-be", "utf-32-le/be", "latin-1"
    size_bytes: int  # uncompressed, for a zip member


@dataclass(frozen=True)
class FileInfo:
    format: str  # the upload's format: one of FORMATS, or "mixed" for several files of different formats
    encoding: str  # detected text encodings, comma-separated ("utf-8", "utf-16-le", "latin-1", ...)
    files: tuple[str, ...]  # every Source.name, in reading order
    sources: tuple[SourceInfo, ...] = ()


def _format_from_name(name: str) -> str | None:
    return EXTENSIONS.get(Path(name).suffix.lower().lstrip("."))


def _sniff_format(head: bytes) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"PAR1"):
        return "parquet"
    for bom, _ in BOMS:
        head = head.removeprefix(bom)
    first = head.lstrip()[:1]
    return {b"[": "json", b"{": "jsonl"}.get(first)


def detect_format(name: str, path: str | Path | None = None) -> str:
    """The format by extension; for an unknown extension, by content when ``path`` is given."""
    found = _format_from_name(name)
    if found is None and path is not None:
        with reading(name), open(path, "rb") as handle:
            found = _sniff_format(handle.read(SNIFF_BYTES))
    if found is None:
        suffix = Path(name).suffix.lower()
        raise DatasetError(f"unsupported file type '{suffix or '(none)'}'; {UPLOAD_HINT}", file=name)
    return found


def detect_encoding(head: bytes, name: str = "") -> tuple[str, int]:
    """(encoding, length of its byte-order mark) from the first bytes of a file."""
    for bom, encoding in BOMS:
        if head.startswith(bom):
            return encoding, len(bom)
    if b"\x00" in head:  # no text encoding without a BOM puts NUL bytes in text
        raise DatasetError(BINARY, file=name)
    try:
        # A multi-byte character cut by the end of the sample is fine, unless the sample is the whole file.
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
        encoding = "utf-8"
    except UnicodeDecodeError:
        encoding = "latin-1"
    controls = sum(byte < 32 and byte not in b"\t\n\r\f\v\x1b" for byte in head)
    if controls > len(head) // 10:  # text has few control characters; compressed or image data has many
        raise DatasetError(BINARY, file=name)
    return encoding, 0


def _listed(paths, names) -> tuple[list, list[str]]:
    """(paths, names) as lists: one path or several; names default to the file names."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    return paths, list(names) if names is not None else [Path(p).name for p in paths]


def iter_sources(paths: str | Path | Sequence[str | Path], names: Sequence[str] | None = None) -> Iterator[Source]:
    """Every file of the dataset in order, zip archives expanded into their members."""
    paths, names = _listed(paths, names)
    if not paths:
        raise DatasetError("no files given; upload at least one data file")
    for path, name in zip(paths, names, strict=True):
        file_format = detect_format(name, path)
        if file_format == "zip":
            yield from _zip_sources(Path(path), name)
        else:
            yield Source(name, file_format, Path(path))


def _junk(member: str) -> bool:
    # Folders macOS and Windows add to archives: never data.
    parts = Path(member).parts
    return any(part == "__MACOSX" or part.startswith(".") for part in parts) or Path(member).name == "Thumbs.db"


def _zip_sources(path: Path, name: str) -> Iterator[Source]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DatasetError(f"not a readable zip archive ({exc}); create it again", file=name) from None
    with archive:
        members = sorted((m for m in archive.infolist() if not m.is_dir() and not _junk(m.filename)),
                         key=lambda m: m.filename)
        if not members:
            raise DatasetError(f"the archive holds no data files; {UPLOAD_HINT}", file=name)
        if len(members) > MAX_MEMBERS:
            raise DatasetError(f"the archive holds {len(members)} files, over the limit of {MAX_MEMBERS}; merge "
                               f"them into fewer files", file=name)
        if sum(m.file_size for m in members) > MAX_ARCHIVE_BYTES:
            raise DatasetError(f"the archive unpacks to over {MAX_ARCHIVE_BYTES >> 30} GiB; upload less data",
                               file=name)
        for member in members:  # all checked before any is read
            where = f"{name}/{member.filename}"
            if member.flag_bits & 0x1:
                raise DatasetError("the file is encrypted; zip it without a password", file=where)
            if member.file_size > (1 << 20) and member.file_size > MAX_RATIO * max(member.compress_size, 1):
                raise DatasetError(f"the file unpacks to {member.file_size} bytes from {member.compress_size} "
                                   f"(a zip bomb?); zip the data files themselves", file=where)
            member_format = _format_from_name(member.filename)
            if member_format == "zip":
                raise DatasetError("archives inside an archive are not read; unpack the inner archive and zip "
                                   "its files directly", file=where)
            if member_format is None:
                raise DatasetError(f"unsupported file type in the archive; remove it or {UPLOAD_HINT}", file=where)
    # Listed only once all are checked, and after the archive is closed: each member opens it anew.
    for member in members:
        yield Source(f"{name}/{member.filename}", _format_from_name(member.filename), path, member)


@contextmanager
def reading(name: str, row: int | None = None):
    """Turn the errors of a damaged archive or file into a DatasetError."""
    try:
        yield
    except READ_ERRORS as exc:
        raise DatasetError(f"the file cannot be read ({type(exc).__name__}: {exc}); the upload or archive is "
                           f"damaged, create it again", file=name, row=row) from None


def source_encoding(source: Source) -> str:
    if source.format == "parquet":
        return "utf-8"  # Parquet stores all strings as UTF-8
    with reading(source.name), source.open() as handle:
        return detect_encoding(handle.read(SNIFF_BYTES), source.name)[0]


def size_limit() -> str:
    """MAX_LINE_BYTES in words, for messages."""
    return f"{MAX_LINE_BYTES >> 20} MiB" if MAX_LINE_BYTES >= 1 << 20 else f"{MAX_LINE_BYTES} bytes"


def _too_long(name: str, line: int) -> DatasetError:
    return DatasetError(f"line {line} is longer than {size_limit()}; split it into several rows or documents",
                        file=name, row=line)


def source_lines(source: Source) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line with its ending) for every line of a text source.

    UTF-8 and Latin-1 are decoded line by line, which gives the exact line
    of a bad byte; UTF-16/32 (where a newline is two or four bytes) go
    through a text wrapper. An empty or whitespace-only file is refused here
    so that every reader says the same."""
    seen_text = False
    with reading(source.name), source.open() as handle:
        encoding, bom = detect_encoding(handle.read(SNIFF_BYTES), source.name)
        handle.close()
    with reading(source.name), source.open() as handle:
        handle.read(bom)
        if encoding in ("utf-8", "utf-8-sig", "latin-1"):
            lines = _byte_lines(handle, source.name, CODECS.get(encoding, encoding))
        else:
            lines = _wrapped_lines(handle, source.name, encoding)
        for number, line in lines:
            seen_text = seen_text or bool(line.strip())
            yield number, line
    if not seen_text:
        raise DatasetError("the file is empty; upload a file with at least one row", file=source.name)


def _byte_lines(handle, name: str, encoding: str) -> Iterator[tuple[int, str]]:
    number = 0
    while True:
        with reading(name, number + 1):
            raw = handle.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw.rstrip(b"\r\n")) > MAX_LINE_BYTES:
            raise _too_long(name, number)
        try:
            yield number, raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise DatasetError(f"not valid UTF-8 text (line {number}, byte {exc.start + 1}), though the start of the "
                               f"file is; save the whole file as UTF-8", file=name, row=number) from None


def _wrapped_lines(handle, name: str, encoding: str) -> Iterator[tuple[int, str]]:
    text = io.TextIOWrapper(handle, encoding=encoding, errors="strict", newline="")
    number = 0
    while True:
        try:
            with reading(name, number + 1):
                line = text.readline(MAX_LINE_BYTES + 1)
        except UnicodeDecodeError:
            # The wrapper decodes ahead in blocks, so the bad byte is at or after this line.
            raise DatasetError(f"not valid {encoding.upper()} text at or after line {number + 1}; save the file "
                               f"again as UTF-8", file=name, row=number + 1) from None
        if not line:
            return
        number += 1
        if len(line.rstrip("\r\n")) > MAX_LINE_BYTES:
            raise _too_long(name, number)
        yield number, line


def source_records(source: Source) -> Iterator[SourceRow]:
    """Every record of a JSONL, JSON, CSV, TSV or Parquet source (parsed in ``records``)."""
    from tuning.data.records import source_records as read

    return read(source)


def iter_rows(paths: str | Path | Sequence[str | Path], *, names: Sequence[str] | None = None) -> Iterator[SourceRow]:
    """Every record of every file of the dataset, in order (the function for several files)."""
    for source in iter_sources(paths, names):
        yield from source_records(source)


def describe(paths: str | Path | Sequence[str | Path], *, names: Sequence[str] | None = None) -> FileInfo:
    """Format and encodings of the dataset's files (reads only the start of each)."""
    sources = list(iter_sources(paths, names))
    formats = {detect_format(name, path) for path, name in zip(*_listed(paths, names))}
    infos = tuple(SourceInfo(source.name, source.format, source_encoding(source),
                             source.member.file_size if source.member else source.path.stat().st_size)
                  for source in sources)
    encodings = dict.fromkeys(info.encoding for info in infos)
    return FileInfo(format=formats.pop() if len(formats) == 1 else "mixed", encoding=", ".join(encodings),
                    files=tuple(source.name for source in sources), sources=infos)


@dataclass(frozen=True)
class Scan:
    """A whole dataset read once without a schema: counts and the first rows only."""

    info: FileInfo
    rows: int  # records, plus non-blank lines of text files
    preview: tuple[dict, ...]  # the first records as the files have them ({"text": line} for text files)


def scan(paths: str | Path | Sequence[str | Path], *, names: Sequence[str] | None = None, preview_rows: int = 5,
         progress: Callable[[int], None] | None = None, every: int = 10_000) -> Scan:
    """Read every record of every file once (so a broken file is refused
    here, naming the row) and keep only the count and ``preview_rows``
    records: memory stays flat for a 1 GB upload. ``progress(rows)`` is
    called every ``every`` rows, for a progress bar."""
    from tuning.data.records import source_records as read  # records parses; formats only finds the files

    count, kept = 0, []
    for source in iter_sources(paths, names):
        items = ({"text": line.rstrip("\r\n")} for _, line in source_lines(source) if line.strip()) \
            if source.format == "text" else (row.data for row in read(source))
        for item in items:
            count += 1
            if len(kept) < preview_rows:
                kept.append(item)
            if progress and count % every == 0:
                progress(count)
    if not count:
        raise DatasetError("no data rows found; add at least one row", file=" + ".join(_listed(paths, names)[1]))
    return Scan(describe(paths, names=names), count, tuple(kept))


def count_lines(path: str | Path) -> int:
    """Lines in a file, counted in 1 MiB blocks without decoding (a last line
    without a newline counts): a quick row estimate for a JSONL or text file
    of any size, before the checked count of a full read."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")
