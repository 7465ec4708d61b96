"""What a row schema is: its fields (with the column names that give each
away), the tasks it suits and, per task, how a row becomes that task's
canonical record. One file per family of schemas defines them
(``conversation``: alpaca, prompt_completion, chat, sharegpt; ``text``:
text, text+label; ``preference``); ``tuning.data.schema.SCHEMAS`` lists
them, and is the only place that detects which one a dataset follows.

A new schema is one file here (its ``Schema`` row and its parser) plus one
line in ``SCHEMAS`` (or ``schema.register_schema(MY_SCHEMA)`` at run time).
Pure Python: the web process detects and checks uploads with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tuning.data.records import pick_column, resolve_column

# parse(record, row, file) -> the task's canonical record (an Example, a Document, ...), or DatasetError.
RowParser = Callable[[dict, int, str], Any]
# parser(schema, first record, its file, its row, the user's mapping or None) -> RowParser. Called once per
# dataset, on its first record: the columns it picks there are read from every later row.
Parser = Callable[["Schema", dict, str, int, "dict[str, str] | None"], RowParser]


@dataclass(frozen=True)
class Field:
    """A canonical field of a schema and the columns that may hold it."""

    name: str
    columns: tuple[str, ...]  # read without a mapping, the canonical name first (case and spaces ignored)
    guesses: tuple[str, ...] = ()  # detection proposes these too, but they are read only once a mapping confirms
    required: bool = True
    help: str = ""  # for the column-mapping form
    # Recognises the column by its values whatever it is called (chat turns under another name).
    shape: Callable[[object], bool] | None = None
    nested: bool = False  # its values are lists or objects, which a CSV/TSV cell cannot hold

    @property
    def names(self) -> tuple[str, ...]:
        """Every column name detection matches, sure (the first) before unsure."""
        return self.columns + self.guesses


@dataclass(frozen=True)
class Schema:
    """One row of the schema table."""

    name: str
    fields: tuple[Field, ...]  # required ones first, as the mapping form lists them
    parsers: dict[str, Parser]  # task -> how a row becomes its record; the keys are the tasks it suits, best first
    aliases: tuple[str, ...] = ()  # other names users and exports call it ("messages" for chat)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.parsers)

    @property
    def required(self) -> dict[str, tuple[str, ...]]:
        return {f.name: f.names for f in self.fields if f.required}

    @property
    def optional(self) -> dict[str, tuple[str, ...]]:
        return {f.name: f.names for f in self.fields if not f.required}

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)


def required_columns(fields: Sequence[Field], first: dict, file: str, row: int, mapping: dict[str, str] | None,
                     hint: str) -> dict[str, str]:
    """{field: column} for the required ``fields`` in the first record: the user's mapping, else the first
    of the field's ``columns`` present; DatasetError naming what is missing."""
    return {f.name: resolve_column((f.name,), f.columns, first, file, mapping=mapping, row=row, hint=hint)
            for f in fields if f.required}


def optional_text(record: dict, field: Field, mapping: dict[str, str] | None) -> str:
    """An optional field's text in this row, or "" (looked up per row: JSONL rows often leave it out)."""
    column = (mapping or {}).get(field.name) or pick_column(field.columns, record)
    value = record.get(column) if column else None
    return value if isinstance(value, str) and value.strip() else ""


def columns_of(fields: Sequence[Field]) -> tuple[str, ...]:
    """The ``columns`` of several fields in order, each once: the names a reader accepting any of them reads."""
    return tuple(dict.fromkeys(name for f in fields for name in f.columns))
