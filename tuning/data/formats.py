"""File formats: one table, ``FILE_FORMATS``, says what each format is
called, which file name extensions and first bytes give it away, whether
its cells can hold lists (chat turns), and which parser reads its records.
Adding a file format is one parser function and one ``FileFormat`` row
(``register_file_format`` does it at run time, as the tests do).

A dataset is one file or several read as one; a .zip is expanded into its
members, each named ``archive.zip/member.jsonl`` in every message. Bytes,
encodings and lines are ``sources``' business; records per format are
``parsers``'. Everything streams, so a 1 GB upload is checked holding only
the current row.

Every problem is a DatasetError naming the file, the row (1-based: the line
for JSONL and text, the data row after the header for CSV/TSV, the element
for a JSON array, the record for Parquet) and the field, and saying what to
do. Pure Python; pyarrow is imported only when a Parquet file is read.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuning.data import parsers, sources
from tuning.data.sources import (FileInfo, Source, SourceInfo, SourceRow, count_lines, detect_encoding, reading,
                                 size_limit, source_lines, text_encoding)
from tuning.errors import DatasetError

__all__ = ["FILE_FORMATS", "FORMATS", "FileFormat", "register_file_format", "unregister_file_format", "Source",
           "SourceRow", "SourceInfo", "FileInfo", "detect_format", "detect_encoding", "iter_sources",
           "source_lines", "source_records", "source_encoding", "iter_rows", "describe", "scan", "Scan",
           "count_lines", "reading", "size_limit"]

MAX_MEMBERS = 1000  # files in one zip (each open re-reads the archive's directory)
MAX_ARCHIVE_BYTES = 16 << 30  # uncompressed total of a zip (bytes)
MAX_RATIO = 200  # uncompressed/compressed size of one member; text rarely beats 20, zip bombs reach 1000+
ZIP = "zip"  # the one container format: its members are the sources


@dataclass(frozen=True)
class FileFormat:
    name: str  # what Source.format, FileInfo.format and the dataset page call it
    extensions: tuple[str, ...]  # file name endings, lower case, without the dot; the first is the usual one
    records: Callable[[Source], Iterator[SourceRow]] | None  # its parser; None: no records (plain text, zip)
    title: str = ""  # the name messages use ("JSONL")
    nested: bool = False  # a value can be a list or an object (chat turns), not only text
    binary: bool = False  # not text: no encoding to detect (Parquet strings are UTF-8 by definition)
    magic: bytes = b""  # the bytes such a file starts with, for a file whose extension says nothing
    first_char: str = ""  # or the first non-blank character of such a text file


FILE_FORMATS: dict[str, FileFormat] = {fmt.name: fmt for fmt in (
    FileFormat("jsonl", ("jsonl", "ndjson"), parsers.jsonl_records, "JSONL", nested=True, first_char="{"),
    FileFormat("json", ("json",), parsers.json_records, "JSON", nested=True, first_char="["),
    FileFormat("csv", ("csv",), parsers.csv_records, "CSV"),
    FileFormat("tsv", ("tsv", "tab"), parsers.tsv_records, "TSV"),
    FileFormat("parquet", ("parquet", "pq"), parsers.parquet_records, "Parquet", nested=True, binary=True,
               magic=b"PAR1"),
    FileFormat("text", ("txt", "text", "md"), None, "plain text"),
    FileFormat(ZIP, ("zip",), None, "zip", binary=True, magic=b"PK\x03\x04"),
)}
# Kept as names for the code that lists formats; read FILE_FORMATS for what a format is.
FORMATS = tuple(FILE_FORMATS)


def register_file_format(fmt: FileFormat) -> None:
    """Add a file format (or replace one of the same name): its extensions and parser are used at once."""
    FILE_FORMATS[fmt.name] = fmt


def unregister_file_format(name: str) -> None:
    FILE_FORMATS.pop(name, None)


def upload_hint() -> str:
    """What to upload instead, in words: every format's usual extension."""
    listed = [f".{fmt.extensions[0]}" for fmt in FILE_FORMATS.values() if fmt.name != ZIP]
    return f"upload {', '.join(listed)}, or a .zip of these"


def nested_titles() -> str:
    """The formats that can hold lists, in words: "JSONL, JSON or Parquet"."""
    titles = [fmt.title for fmt in FILE_FORMATS.values() if fmt.nested]
    return " or ".join([", ".join(titles[:-1]), titles[-1]] if len(titles) > 1 else titles)


def _format_from_name(name: str) -> str | None:
    suffix = Path(name).suffix.lower().lstrip(".")
    return next((fmt.name for fmt in FILE_FORMATS.values() if suffix in fmt.extensions), None)


def _sniff_format(head: bytes) -> str | None:
    for fmt in FILE_FORMATS.values():
        if fmt.magic and head.startswith(fmt.magic):
            return fmt.name
    try:
        encoding, bom = detect_encoding(head)
    except DatasetError:
        return None  # binary and no known magic: not a format of ours
    first = head[bom:].decode(sources.CODECS.get(encoding, encoding), errors="ignore").lstrip()[:1]
    return next((fmt.name for fmt in FILE_FORMATS.values() if first and fmt.first_char == first), None)


def detect_format(name: str, path: str | Path | None = None) -> str:
    """The format by extension; for an unknown extension, by content when ``path`` is given."""
    found = _format_from_name(name)
    if found is None and path is not None:
        with reading(name), open(path, "rb") as handle:
            found = _sniff_format(handle.read(sources.SNIFF_BYTES))
    if found is None:
        suffix = Path(name).suffix.lower()
        raise DatasetError(f"unsupported file type '{suffix or '(none)'}'; {upload_hint()}", file=name)
    return found


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
        if file_format == ZIP:
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
            raise DatasetError(f"the archive holds no data files; {upload_hint()}", file=name)
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
            if member_format == ZIP:
                raise DatasetError("archives inside an archive are not read; unpack the inner archive and zip "
                                   "its files directly", file=where)
            if member_format is None:
                raise DatasetError(f"unsupported file type in the archive; remove it or {upload_hint()}", file=where)
    # Listed only once all are checked, and after the archive is closed: each member opens it anew.
    for member in members:
        yield Source(f"{name}/{member.filename}", _format_from_name(member.filename), path, member)


def source_encoding(source: Source) -> str:
    if FILE_FORMATS[source.format].binary:
        return "utf-8"  # a binary format's strings are UTF-8 by definition (Parquet's are)
    return text_encoding(source)[0]


def source_records(source: Source) -> Iterator[SourceRow]:
    """Every record of a source, read by its format's parser."""
    read = FILE_FORMATS[source.format].records
    if read is None:
        with_records = ", ".join(f".{f.extensions[0]}" for f in FILE_FORMATS.values() if f.records)
        raise DatasetError(f"{FILE_FORMATS[source.format].title} has no columns; upload {with_records} for this "
                           f"task", file=source.name)
    yield from read(source)  # a generator, so that, as before, nothing is read or refused until iterated


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
    count, kept = 0, []
    for source in iter_sources(paths, names):
        items = ({"text": line.rstrip("\r\n")} for _, line in source_lines(source) if line.strip()) \
            if FILE_FORMATS[source.format].records is None else (row.data for row in source_records(source))
        for item in items:
            count += 1
            if len(kept) < preview_rows:
                kept.append(item)
            if progress and count % every == 0:
                progress(count)
    if not count:
        raise DatasetError("no data rows found; add at least one row", file=" + ".join(_listed(paths, names)[1]))
    return Scan(describe(paths, names=names), count, tuple(kept))

