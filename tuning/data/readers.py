"""Read supervised fine-tuning data: every row becomes a conversation
(``Example``).

The conversation schemas (alpaca, prompt_completion, chat, sharegpt) and how
each row becomes an Example are in ``schemas.conversation``; which schema a
dataset follows is decided by ``schema`` (the same detector the upload page
uses), from the first row; every row must follow it. Any format of
``formats`` is read (JSONL, JSON, CSV/TSV, Parquet, a zip of them).

``schema=`` forces one of these and ``mapping=`` ({canonical field: column},
see ``schema``) says which column holds which field, for data whose column
names are not recognised. Pure Python (no torch): the web process
validates uploads with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tuning.data import formats
from tuning.data.records import (DatasetSummary, Paths, dataset_files, detect_format, file_sha256, read_all,
                                 summarize_rows)
from tuning.data.schema import Rows, canonical_schema, schemas_for_task, task_rows
from tuning.data.schemas.conversation import (PROMPT_KEYS, RESPONSE_KEYS, ROLE_ALIASES, ROLES, Example,
                                              Message)
from tuning.errors import DatasetError

__all__ = ["Example", "Message", "PreviewRow", "DatasetSummary", "detect_format", "file_sha256",
           "read_examples", "iter_examples", "example_rows", "summarize", "PROMPT_KEYS", "RESPONSE_KEYS",
           "ROLES", "ROLE_ALIASES", "CHAT_KEYS"]

# A list column's name -> the chat schema it names (lint reads rows without a schema).
CHAT_KEYS = {"messages": "chat", "conversations": "sharegpt"}
PLAIN_TEXT = ("plain text (.txt) can be used only for continued pre-training; for instruction or chat fine-tuning "
              "upload .jsonl, .json, .csv, .tsv or .parquet")


@dataclass(frozen=True)
class PreviewRow:
    """A row as the dataset page shows it: the first system/user/assistant
    text for a table, and every turn for a conversation view."""

    system: str
    prompt: str
    response: str
    messages: tuple[dict, ...]  # {"role", "content"} for every turn

    @classmethod
    def of(cls, example: Example) -> "PreviewRow":
        return cls(system=example.system, prompt=example.prompt, response=example.response,
                   messages=tuple({"role": m.role, "content": m.content} for m in example.messages))


def _sft_schema(schema: str | None, name: str) -> str | None:
    if schema is None:
        return None
    schema = canonical_schema(schema, file=name)
    if schema not in schemas_for_task("sft"):
        raise DatasetError(f"the {schema} schema cannot be used for instruction or chat fine-tuning; use "
                           f"{', '.join(schemas_for_task('sft'))}", file=name, field="schema")
    return schema


def _refuse_plain_text(source: formats.Source) -> Iterator[Example]:
    raise DatasetError(PLAIN_TEXT, file=source.name)
    yield  # a generator, as task_rows expects of a plain-text reader


def example_rows(path: Paths, *, name: str | None = None, schema: str | None = None,
                 mapping: dict[str, str] | None = None) -> Rows:
    """The dataset read for sft: its detection, the schema it is read as, and its Examples."""
    paths, names, label = dataset_files(path, name)
    schema = _sft_schema(schema, label)
    for source in formats.iter_sources(paths, names):
        if formats.FILE_FORMATS[source.format].records is None:  # before any row is read: say it first
            raise DatasetError(PLAIN_TEXT, file=source.name)
    return task_rows("sft", path, name=name, schema=schema, mapping=mapping, plain_text=_refuse_plain_text)


def iter_examples(path: Paths, *, name: str | None = None, schema: str | None = None,
                  mapping: dict[str, str] | None = None) -> Iterator[Example]:
    """Every row of the dataset (one file, a zip, or a list of files) as an
    Example, checked as it is read. ``Example.row`` is the row within its file."""
    yield from example_rows(path, name=name, schema=schema, mapping=mapping).records


def read_examples(path: Paths, *, name: str | None = None, schema: str | None = None,
                  mapping: dict[str, str] | None = None) -> list[Example]:
    """Every row of the dataset as an Example, or DatasetError at the first bad row."""
    return read_all(iter_examples(path, name=name, schema=schema, mapping=mapping), dataset_files(path, name)[2])


def summarize(path: Paths, *, name: str | None = None, preview_rows: int = 5, schema: str | None = None,
              mapping: dict[str, str] | None = None) -> DatasetSummary:
    """Check the whole dataset and describe it (for the upload page), holding
    only the preview rows in memory."""
    rows = example_rows(path, name=name, schema=schema, mapping=mapping)
    return summarize_rows(path, dataset_files(path, name)[2], rows.records, schema=rows.schema,
                          detection=rows.detection, preview_rows=preview_rows, preview=PreviewRow.of)
