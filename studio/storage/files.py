"""Sizes and removal of what the studio keeps under MEDIA_ROOT. Removal never
leaves MEDIA_ROOT: a path that resolves outside it (a symlink, a stored path
edited by hand) is refused, not followed."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings


def directory_size(directory: Path) -> int:
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file() and not f.is_symlink())


def _inside_media(path: Path) -> Path:
    root = Path(settings.MEDIA_ROOT).resolve()
    resolved = Path(path).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise ValueError(f"{path} is not inside MEDIA_ROOT ({root}); it is not removed")
    return resolved


def remove_under_media(path: str | Path) -> int:
    """Remove a file or a directory tree under MEDIA_ROOT; the bytes freed (0 if already gone).
    A reader that opened a file before keeps reading it (POSIX unlink)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return 0
    if path.is_symlink():  # remove the link itself, never what it points to
        _inside_media(path.parent)
        path.unlink()
        return 0
    target = _inside_media(path)
    if target.is_dir():
        freed = directory_size(target)
        shutil.rmtree(target)
        return freed
    freed = target.stat().st_size
    target.unlink()
    return freed
