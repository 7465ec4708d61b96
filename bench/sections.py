"""A bench script's own section of a shared markdown file (BENCHMARKS.md),
between ``<!-- NAME: begin -->`` and ``<!-- NAME: end -->`` markers: a
script rewrites its section and leaves every other one as it was."""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: begin -->", f"<!-- {name}: end -->"


def write_section(path: Path, name: str, body: str) -> None:
    """``body`` between ``name``'s markers in ``path``: in place of the section there, else at the top."""
    begin, end = markers(name)
    section = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = section + "\n\n" + text
    path.write_text(text)
