"""Stream a directory as a zip without building it in memory or on disk."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator


class _Pipe:
    """A write-only file object whose written bytes are collected between reads.
    zipfile supports unseekable outputs (it writes data descriptors)."""

    def __init__(self):
        self.chunks: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self):
        pass

    def drain(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def zip_directory(directory: Path, *, prefix: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The zip of ``directory``, as chunks. Every file is opened here, before
    the first chunk is asked for: a download that has begun is not broken by
    the artifact's deletion and purge (an open file outlives its unlinking)."""
    sources = [(path.relative_to(directory), path.stat().st_size, open(path, "rb"))
               for path in sorted(p for p in directory.rglob("*") if p.is_file())]
    return _zip_chunks(sources, prefix=prefix, chunk_size=chunk_size)


def _zip_chunks(sources: list, *, prefix: str, chunk_size: int) -> Iterator[bytes]:
    pipe = _Pipe()
    try:
        with zipfile.ZipFile(pipe, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, size, source in sources:
                with source, archive.open(f"{prefix}/{name}", "w", force_zip64=size > 2**30) as target:
                    for block in iter(lambda: source.read(chunk_size), b""):
                        target.write(block)
                        yield pipe.drain()
                yield pipe.drain()
        yield pipe.drain()
    finally:  # a client that went away mid-download leaves no file open
        for _, _, source in sources:
            source.close()
