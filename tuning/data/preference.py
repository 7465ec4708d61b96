"""Preference pairs: a prompt, the reply to prefer and the reply to avoid.

Rows of ``prompt`` + ``chosen`` + ``rejected`` (optional ``system``; the
prompt may also be called question or instruction) are checked and stored
at upload, so that a preference-training method (DPO and the like) can use
them later; no training method reads them yet. ``chosen`` and ``rejected``
are text, or a list of chat turns ({"role", "content"}) as in exports that
keep whole conversations: the reply is then the last assistant turn's text.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tuning.data import formats
from tuning.data.records import Paths, dataset_files, read_all, resolve_column, text_value
from tuning.errors import DatasetError

__all__ = ["PreferencePair", "iter_pairs", "read_pairs"]

PROMPT_KEYS = ("prompt", "question", "instruction")
CHOSEN_KEYS = ("chosen",)
REJECTED_KEYS = ("rejected",)
HINT = "Preference data needs prompt, chosen and rejected columns"


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    system: str = ""
    row: int | None = None


def _reply(record: dict, key: str, file: str, row: int) -> str:
    value = record.get(key)
    if not isinstance(value, list):
        return text_value(record, key, file, row)
    # A whole conversation: the reply being judged is its last assistant turn.
    for index in range(len(value) - 1, -1, -1):
        turn = value[index]
        if isinstance(turn, dict) and turn.get("role") in ("assistant", "gpt"):
            return text_value(turn, "content", file, row, field=f"{key}[{index}].content")
    raise DatasetError("has no assistant turn; give the reply as text or end the turns with the assistant's",
                       file=file, row=row, field=key)


def iter_pairs(path: Paths, *, name: str | None = None,
               mapping: dict[str, str] | None = None) -> Iterator[PreferencePair]:
    """Every row of the dataset as a PreferencePair, checked as it is read.
    ``mapping`` may name the columns: {"prompt": ..., "chosen": ..., "rejected": ..., "system": ...}."""
    paths, names, _ = dataset_files(path, name)
    keys = None
    for item in formats.iter_rows(paths, names=names):
        if keys is None:
            keys = tuple(resolve_column((field,), aliases, item.data, item.file, mapping=mapping, row=item.row,
                                        hint=HINT)
                         for field, aliases in (("prompt", PROMPT_KEYS), ("chosen", CHOSEN_KEYS),
                                                ("rejected", REJECTED_KEYS)))
            system_key = (mapping or {}).get("system", "system")
        system = item.data.get(system_key)
        yield PreferencePair(prompt=text_value(item.data, keys[0], item.file, item.row),
                             chosen=_reply(item.data, keys[1], item.file, item.row),
                             rejected=_reply(item.data, keys[2], item.file, item.row),
                             system=system if isinstance(system, str) else "", row=item.row)


def read_pairs(path: Paths, *, name: str | None = None,
               mapping: dict[str, str] | None = None) -> list[PreferencePair]:
    return read_all(iter_pairs(path, name=name, mapping=mapping), dataset_files(path, name)[2])
