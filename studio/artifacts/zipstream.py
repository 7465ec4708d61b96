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
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            with open(path, "rb") as source, archive.open(f"{prefix}/{path.relative_to(directory)}", "w",
                                                          force_zip64=path.stat().st_size > 2**30) as target:
                for block in iter(lambda: source.read(chunk_size), b""):
                    target.write(block)
                    yield pipe.drain()
            yield pipe.drain()
    yield pipe.drain()
