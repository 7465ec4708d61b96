"""Read supervised fine-tuning data: every row becomes a conversation.

Accepted schemas (detected from the first row; every row must use it), in
any format of ``formats`` (JSONL, JSON, CSV/TSV, Parquet, a zip of them):

- ``alpaca``: ``instruction`` [+ ``input``] + ``output``, optional ``system``;
  ``prompt_completion``: prompt + completion (also prompt/response,
  question/answer, query/response).
- ``chat`` (OpenAI): ``messages``: [{"role", "content"}], roles system, user,
  assistant; an assistant message with ``"weight": 0`` is context only.
- ``sharegpt``: ``conversations``: [{"from", "value"}], from human, gpt,
  system (user and assistant work too).
  Chat rows need lists, so not CSV/TSV.

``schema=`` forces one of these and ``mapping=`` ({canonical field: column},
see ``schema``) says which column holds which field, for data whose column
names are not recognised.

A conversation is: an optional system message first, then a user turn, and
it ends on an assistant turn. Pure Python (no torch): the web process
validates uploads with it. Every problem names the file, the row and the
field (``messages[2].role`` counts turns from 0, as in the JSON).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tuning.data import formats
from tuning.data.records import (DatasetSummary, Paths, dataset_files, detect_format, file_sha256, pick_column,
                                 read_all, resolve_column, summarize_rows, text_value)
from tuning.data.schema import canonical_schema, check_mapping, mapped_column
from tuning.errors import DatasetError

__all__ = ["Example", "Message", "PreviewRow", "DatasetSummary", "detect_format", "file_sha256",
           "read_examples", "iter_examples", "summarize"]

# Accepted column names, in order of preference.
PROMPT_KEYS = ("instruction", "prompt", "question", "query")
RESPONSE_KEYS = ("output", "response", "completion", "answer", "reply")
SFT_SCHEMAS = ("alpaca", "prompt_completion", "chat", "sharegpt")
CHAT_KEYS = {"messages": "chat", "conversations": "sharegpt"}  # list column -> schema name
ROLES = ("system", "user", "assistant")
# Role spellings accepted in either chat schema (ShareGPT's and OpenAI's).
ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


@dataclass(frozen=True)
class Message:
    role: str  # system, user or assistant
    content: str
    train: bool = True  # False for an assistant turn kept as context only (OpenAI "weight": 0)


@dataclass(frozen=True)
class Example:
    """One SFT conversation. ``row`` is its 1-based row in the file, for
    error messages raised later (tokenizing)."""

    messages: tuple[Message, ...]
    row: int | None = None

    @classmethod
    def from_pair(cls, prompt: str, response: str, system: str = "", row: int | None = None) -> "Example":
        turns = (Message("user", prompt), Message("assistant", response))
        return cls((Message("system", system),) + turns if system else turns, row)

    def _first(self, role: str) -> str:
        return next((m.content for m in self.messages if m.role == role), "")

    @property
    def system(self) -> str:
        return self._first("system")

    @property
    def prompt(self) -> str:
        return self._first("user")

    @property
    def response(self) -> str:
        return self._first("assistant")


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


def _pair_parser(columns, name: str, row: int, file_format: str,
                 mapping: dict | None = None) -> Callable[[dict, int, str], Example]:
    hint = ("Chat data (messages or conversations) must be uploaded as JSONL, JSON or Parquet"
            if file_format in ("csv", "tsv") and pick_column(tuple(CHAT_KEYS), columns)
            else "Rename your columns to instruction and output, or give a column mapping")
    prompt_key = resolve_column(("instruction", "prompt"), PROMPT_KEYS, columns, name, mapping=mapping, row=row,
                                hint=hint)
    response_key = resolve_column(("output", "completion", "response"), RESPONSE_KEYS, columns, name,
                                  mapping=mapping, row=row, hint=hint)
    mapped = {key: mapped_column(mapping, key) for key in ("input", "system")}

    def optional(record: dict, key: str) -> str:
        # Looked up per row: JSONL rows often leave out an empty input or system.
        value = record.get(mapped[key] or pick_column((key,), record) or key)
        return value if isinstance(value, str) and value.strip() else ""

    def parse(record: dict, row: int, file: str) -> Example:
        prompt = text_value(record, prompt_key, file, row)
        response = text_value(record, response_key, file, row)
        if extra := optional(record, "input"):
            prompt = f"{prompt}\n\n{extra}"
        return Example.from_pair(prompt, response, optional(record, "system"), row)

    return parse


def _message(item, name: str, row: int, where: str) -> Message | None:
    """One turn of a chat row; None for an empty system message (treated as absent)."""
    if not isinstance(item, dict):
        raise DatasetError("each turn must be an object like {\"role\": \"user\", \"content\": \"...\"}",
                           file=name, row=row, field=where)
    # OpenAI spells a turn role/content, ShareGPT from/value; name whichever the row uses.
    role_key = "role" if "role" in item or "from" not in item else "from"
    content_key = "content" if "content" in item or ("value" not in item and role_key == "role") else "value"
    role = item.get(role_key)
    if role is None:
        raise DatasetError("is missing; say who speaks: system, user or assistant", file=name, row=row,
                           field=f"{where}.{role_key}")
    if not isinstance(role, str) or role.strip().lower() not in ROLE_ALIASES:
        raise DatasetError(f"{role!r} is not a role here; use system, user or assistant (ShareGPT: system, "
                           f"human, gpt)", file=name, row=row, field=f"{where}.{role_key}")
    role = ROLE_ALIASES[role.strip().lower()]
    content = item.get(content_key)
    if role == "system" and isinstance(content, str) and not content.strip():
        return None
    content = text_value(item, content_key, name, row, field=f"{where}.{content_key}")
    weight = item.get("weight", 1)
    if weight not in (0, 1) or isinstance(weight, bool):
        raise DatasetError("must be 0 (do not train on this turn) or 1", file=name, row=row,
                           field=f"{where}.weight")
    return Message(role, content, train=weight == 1)


def _check_order(messages: list[tuple[int, Message]], name: str, row: int, key: str) -> None:
    """An optional system message first, then a user turn; the last turn is the assistant's."""
    def error(index: int, message: str) -> DatasetError:
        # index -1: the conversation as a whole (or a system prompt given beside it)
        return DatasetError(message, file=name, row=row, field=f"{key}[{index}].role" if index >= 0 else key)

    turns = [(i, m) for i, m in messages if m.role != "system"]
    if not turns:
        raise error(-1, "has no user or assistant turn; add a user turn and the assistant's reply")
    for position, (index, message) in enumerate(messages):
        if message.role == "system" and position > 0:
            raise error(index, "a system message can only come first; move it to the start or remove it")
    if turns[0][1].role != "user":
        raise error(turns[0][0], "the conversation must start with a user turn (after an optional system message)")
    if not any(m.role == "assistant" for _, m in turns):
        raise error(-1, "has no assistant turn; add the assistant's reply")
    if turns[-1][1].role == "user":
        raise error(turns[-1][0], "the conversation ends on a user turn; add the assistant's reply or remove the "
                                  "last turn")


def _chat_parser(key: str, schema: str, system_key: str = "system") -> Callable[[dict, int, str], Example]:
    def parse(record: dict, row: int, name: str) -> Example:
        turns = record.get(key)
        if turns is None:
            raise DatasetError(f"is missing; every row must use the same format as the first ({schema})",
                               file=name, row=row, field=key)
        if not isinstance(turns, list) or not turns:
            raise DatasetError("must be a non-empty list of turns", file=name, row=row, field=key)
        parsed = [(i, _message(item, name, row, f"{key}[{i}]")) for i, item in enumerate(turns)]
        messages = [(i, m) for i, m in parsed if m is not None]
        system = record.get(system_key)  # some exports keep the system prompt beside the turns
        if isinstance(system, str) and system.strip() and not (messages and messages[0][1].role == "system"):
            messages.insert(0, (-1, Message("system", system)))
        _check_order(messages, name, row, key)
        return Example(tuple(m for _, m in messages), row)

    return parse


def _parser(record: dict, row: int, name: str, file_format: str, schema: str | None,
            mapping: dict | None) -> Callable[[dict, int, str], Example]:
    """The row parser for the dataset, chosen from its first record."""
    if mapping:
        # Optional fields (input, system) may be left out of the first JSONL row, so only their names are checked.
        optional = tuple(mapping[key] for key in ("input", "system") if key in mapping)
        check_mapping(mapping, (*record, *optional), schema=schema or "", file=name)
    if schema is None:
        if mapped_column(mapping, "messages"):
            schema = "chat"
        elif mapped_column(mapping, "conversations"):
            schema = "sharegpt"
        elif not mapping and file_format not in ("csv", "tsv") and (key := pick_column(tuple(CHAT_KEYS), record)):
            schema = CHAT_KEYS[key.strip().lower()]  # chat needs lists: never from CSV
        else:
            schema = "alpaca"
    if schema in ("chat", "sharegpt"):
        field = "messages" if schema == "chat" else "conversations"
        key = resolve_column((field,), (field,), record, name, mapping=mapping, row=row,
                             hint=f"{schema} data keeps its turns in a {field} column")
        return _chat_parser(key, schema, mapped_column(mapping, "system") or "system")
    return _pair_parser(tuple(record), name, row, file_format, mapping)


def detect_schema(columns, file_format: str = "jsonl") -> str:
    """alpaca, chat or sharegpt, from a row's column names."""
    key = pick_column(tuple(CHAT_KEYS), columns) if file_format not in ("csv", "tsv") else None
    return CHAT_KEYS[key.strip().lower()] if key else "alpaca"


def _sft_schema(schema: str | None, name: str) -> str | None:
    if schema is None:
        return None
    schema = canonical_schema(schema, file=name)
    if schema not in SFT_SCHEMAS:
        raise DatasetError(f"the {schema} schema cannot be used for instruction or chat fine-tuning; use "
                           f"{', '.join(SFT_SCHEMAS)}", file=name, field="schema")
    return schema


def iter_examples(path: Paths, *, name: str | None = None, schema: str | None = None,
                  mapping: dict[str, str] | None = None) -> Iterator[Example]:
    """Every row of the dataset (one file, a zip, or a list of files) as an
    Example, checked as it is read; the schema is the first row's unless
    ``schema`` says otherwise. ``Example.row`` is the row within its file."""
    paths, names, label = dataset_files(path, name)
    schema = _sft_schema(schema, label)
    for source in formats.iter_sources(paths, names):
        if source.format == "text":
            raise DatasetError("plain text (.txt) can be used only for continued pre-training; for instruction or "
                               "chat fine-tuning upload .jsonl, .json, .csv, .tsv or .parquet", file=source.name)
    parse = None
    for source in formats.iter_sources(paths, names):
        if source.format == "text":
            raise DatasetError("plain text (.txt) can be used only for continued pre-training; for instruction or "
                               "chat fine-tuning upload .jsonl, .json, .csv, .tsv or .parquet", file=source.name)
        for item in formats.source_records(source):
            # The first row of the first file decides the schema; every later row and file must follow it.
            parse = parse or _parser(item.data, item.row, item.file, source.format, schema, mapping)
            yield parse(item.data, item.row, item.file)


def read_examples(path: Paths, *, name: str | None = None, schema: str | None = None,
                  mapping: dict[str, str] | None = None) -> list[Example]:
    """Every row of the dataset as an Example, or DatasetError at the first bad row."""
    return read_all(iter_examples(path, name=name, schema=schema, mapping=mapping), dataset_files(path, name)[2])


def summarize(path: Paths, *, name: str | None = None, preview_rows: int = 5, schema: str | None = None,
              mapping: dict[str, str] | None = None) -> DatasetSummary:
    """Check the whole dataset and describe it (for the upload page), holding
    only the preview rows in memory."""
    label = dataset_files(path, name)[2]
    rows = iter_examples(path, name=name, schema=schema, mapping=mapping)
    summary = summarize_rows(path, label, rows, schema="", preview_rows=preview_rows, preview=PreviewRow.of)
    return dataclasses.replace(summary, schema=_schema_read(schema, mapping, summary.detection.schema))


def _schema_read(schema: str | None, mapping: dict | None, detected: str) -> str:
    """The schema the rows were read as (what the dataset page records)."""
    if schema:
        return canonical_schema(schema)
    if mapping:
        return ("chat" if "messages" in mapping else "sharegpt" if "conversations" in mapping
                else "alpaca" if {"instruction", "output"} & set(mapping) else "prompt_completion")
    return detected if detected in SFT_SCHEMAS else "alpaca"
