"""Files as bytes and lines: where a dataset's files are, which text
encoding each has, and their lines, streamed. Knows nothing of which file
format is which (that is ``formats``' table) or of records (``parsers``).

Text encodings are detected per file: a byte-order mark (UTF-8, UTF-16 or
UTF-32), else strict UTF-8 on the first ``SNIFF_BYTES``, else Latin-1.
Latin-1 is the last resort because every byte sequence decodes as Latin-1:
it never fails, so it proves nothing and must only be tried once UTF-8 has
been ruled out; it is, though, what spreadsheet exports in Western Europe
most often are when they are not UTF-8.

Lines are read one at a time, each capped at ``MAX_LINE_BYTES``, so a 1 GB
upload is checked holding only the current line. Every problem is a
DatasetError naming the file and the row (1-based: the line for JSONL and
text) and saying what to do. Pure Python.
"""

from __future__ import annotations

import codecs
import io
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tuning.errors import DatasetError

__all__ = ["Source", "SourceRow", "SourceInfo", "FileInfo", "detect_encoding", "reading", "text_encoding",
           "source_lines", "size_limit", "count_lines"]

SNIFF_BYTES = 64 * 1024  # how much of a file decides its encoding (and whether it is binary)
MAX_LINE_BYTES = 32 << 20  # one line, CSV value or JSON element; longer is almost surely not a row
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
CODECS = {"utf-8-sig": "utf-8"}  # the BOM is skipped before decoding, so decode the rest as plain UTF-8
BINARY = "this looks like a binary file, not text; export the data as text (UTF-8) in one of the formats listed"
# Errors a damaged archive or file raises while it is being read.
READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


@dataclass(frozen=True)
class Source:
    """One file of a dataset: a file on disk, or a member of a zip archive."""

    name: str  # what messages call it: "data.jsonl" or "data.zip/part-1.jsonl"
    format: str  # a name in formats.FILE_FORMATS (never zip: members are their own sources)
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
    format: str  # the upload's format: a name in formats.FILE_FORMATS, or "mixed" for files of several formats
    encoding: str  # detected text encodings, comma-separated ("utf-8", "utf-16-le", "latin-1", ...)
    files: tuple[str, ...]  # every Source.name, in reading order
    sources: tuple[SourceInfo, ...] = ()


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


@contextmanager
def reading(name: str, row: int | None = None):
    """Turn the errors of a damaged archive or file into a DatasetError."""
    try:
        yield
    except READ_ERRORS as exc:
        raise DatasetError(f"the file cannot be read ({type(exc).__name__}: {exc}); the upload or archive is "
                           f"damaged, create it again", file=name, row=row) from None


def text_encoding(source: Source) -> tuple[str, int]:
    """(encoding, length of its byte-order mark) of a text source, from its first ``SNIFF_BYTES``."""
    with reading(source.name), source.open() as handle:
        return detect_encoding(handle.read(SNIFF_BYTES), source.name)


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
    encoding, bom = text_encoding(source)
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
