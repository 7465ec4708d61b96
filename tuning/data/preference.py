"""Preference pairs: a prompt, the reply to prefer and the reply to avoid.

The ``preference`` schema (``schemas.preference``) says which columns hold
them and how a row becomes a ``PreferencePair``. Rows are checked and stored
at upload, so that a preference-training method (DPO and the like) can use
them later; no training method reads them yet.
"""

from __future__ import annotations

from collections.abc import Iterator

from tuning.data.records import Paths, dataset_files, read_all
from tuning.data.schema import Rows, task_rows
from tuning.data.schemas.preference import PreferencePair

__all__ = ["PreferencePair", "pair_rows", "iter_pairs", "read_pairs"]


def pair_rows(path: Paths, *, name: str | None = None, schema: str | None = None,
              mapping: dict[str, str] | None = None) -> Rows:
    """The dataset read for preference: its detection, the schema it is read as, and its pairs."""
    return task_rows("preference", path, name=name, schema=schema, mapping=mapping)


def iter_pairs(path: Paths, *, name: str | None = None, schema: str | None = None,
               mapping: dict[str, str] | None = None) -> Iterator[PreferencePair]:
    """Every row of the dataset as a PreferencePair, checked as it is read.
    ``mapping`` may name the columns: {"prompt": ..., "chosen": ..., "rejected": ..., "system": ...}."""
    yield from pair_rows(path, name=name, schema=schema, mapping=mapping).records


def read_pairs(path: Paths, *, name: str | None = None, schema: str | None = None,
               mapping: dict[str, str] | None = None) -> list[PreferencePair]:
    return read_all(iter_pairs(path, name=name, schema=schema, mapping=mapping), dataset_files(path, name)[2])
