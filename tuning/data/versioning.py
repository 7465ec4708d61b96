"""Dataset versions: a content hash per version and the lineage that links
a derived version (deduplicated, filtered, subsampled, split, merged) to
the version(s) it came from.

The hash is over the rows, not the file's bytes: key order and JSON
spacing do not change it, so a version written back out by ``write_jsonl``
(or re-exported by another tool) keeps its identity, while any change to a
value does not. Pure Python (no torch): the web process may call it.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuning.errors import DatasetError

__all__ = ["canonical_line", "content_hash", "write_jsonl", "Lineage", "normalise_text", "row_key", "text_key"]


def canonical_line(row: dict) -> str:
    """One row as canonical JSON: sorted keys, no spaces, UTF-8 kept as is.

    ``ensure_ascii=False`` so that "é" and "\\u00e9" in the source hash alike."""
    try:
        return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"a row cannot be written as JSON ({exc}); keep values to text, numbers, true/false, "
                           f"null, lists and objects") from None


def content_hash(rows: list[dict]) -> str:
    """sha256 (hex) of the rows as canonical JSON lines, in order.

    Row order counts: a shuffled dataset is a different version (it trains
    differently when shuffling is off, and split seeds pick other rows)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(canonical_line(row).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def write_jsonl(rows: list[dict], path: str | Path) -> str:
    """Write ``rows`` as JSON lines (keys in their given order, so the first
    row's columns read as the file's columns) and return their content hash.

    Written to a sibling ``.partial`` file first and renamed, so a reader
    never sees half a version."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    digest = hashlib.sha256()
    with open(partial, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            if not isinstance(row, dict):
                raise DatasetError(f"each row must be an object, not {type(row).__name__}")
            handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            digest.update(canonical_line(row).encode("utf-8") + b"\n")
    os.replace(partial, path)
    return digest.hexdigest()


def normalise_text(text: str) -> str:
    """Unicode NFKC, case-folded, whitespace collapsed: what "the same text" means for exact duplicates
    (a trailing space or a capital letter does not make a row new to the model)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _normalise_value(value):
    if isinstance(value, str):
        return normalise_text(value)
    if isinstance(value, list):
        return [_normalise_value(item) for item in value]
    if isinstance(value, dict):
        return {key: _normalise_value(item) for key, item in value.items()}
    return value


def text_key(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()


def row_key(row: dict) -> str:
    """Hash of a row with every string normalised: equal for exact duplicates whatever the key order."""
    return hashlib.sha256(canonical_line(_normalise_value(row)).encode("utf-8")).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Lineage:
    """How one dataset version was made: ``operation`` (a key of
    ``diet.DIET_OPERATIONS``, or "upload") with ``parameters`` applied to
    the parent version(s). ``rows_before`` sums the parents' rows."""

    parents: tuple[str, ...]  # content hashes of the input version(s); merge has several
    operation: str
    parameters: dict = field(default_factory=dict)
    rows_before: int = 0
    rows_after: int = 0
    result: str = ""  # content hash of the version this made
    report: dict = field(default_factory=dict)  # the operation's report (what it removed and why)
    part: str = ""  # which output of the operation this version is: "train" or "validation" for a split

    def to_dict(self) -> dict:
        data = asdict(self)
        data["parents"] = list(self.parents)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Lineage":
        known = {"parents", "operation", "parameters", "rows_before", "rows_after", "result", "report", "part"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DatasetError(f"unknown lineage field(s): {', '.join(unknown)}")
        return cls(**{**data, "parents": tuple(data.get("parents", ()))})
