"""Read supervised fine-tuning data: every row becomes a conversation.

Accepted schemas (detected from the first row; every row must use it):

- ``alpaca``: ``instruction`` [+ ``input``] + ``output``, optional ``system``;
  also prompt/response, prompt/completion, question/answer. JSONL or CSV.
- ``chat`` (OpenAI): ``messages``: [{"role", "content"}], roles system, user,
  assistant; an assistant message with ``"weight": 0`` is context only. JSONL.
- ``sharegpt``: ``conversations``: [{"from", "value"}], from human, gpt,
  system (user and assistant work too). JSONL.

A conversation is: an optional system message first, then a user turn, and
it ends on an assistant turn. Pure Python (no torch): the web process
validates uploads with it. Every problem names the file, the row and the
field (``messages[2].role`` counts turns from 0, as in the JSON).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tuning.data.records import (DatasetSummary, detect_format, file_sha256, iter_records, pick_column,
                                 read_all, require_column, summarize_rows, text_value)
from tuning.errors import DatasetError

__all__ = ["Example", "Message", "PreviewRow", "DatasetSummary", "detect_format", "file_sha256",
           "read_examples", "iter_examples", "summarize"]

# Accepted column names, in order of preference.
PROMPT_KEYS = ("instruction", "prompt", "question")
RESPONSE_KEYS = ("output", "response", "completion", "answer")
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


def _pair_parser(columns, name: str, row: int, file_format: str) -> Callable[[dict, int], Example]:
    hint = ("Chat data (messages or conversations) must be uploaded as JSONL"
            if file_format == "csv" and pick_column(tuple(CHAT_KEYS), columns)
            else "Rename your columns to instruction and output")
    prompt_key = require_column(PROMPT_KEYS, columns, name, row=row, hint=hint)
    response_key = require_column(RESPONSE_KEYS, columns, name, row=row, hint=hint)

    def optional(record: dict, key: str) -> str:
        # Looked up per row: JSONL rows often leave out an empty input or system.
        value = record.get(pick_column((key,), record) or key)
        return value if isinstance(value, str) and value.strip() else ""

    def parse(record: dict, row: int) -> Example:
        prompt = text_value(record, prompt_key, name, row)
        response = text_value(record, response_key, name, row)
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


def _chat_parser(key: str, name: str) -> Callable[[dict, int], Example]:
    schema = CHAT_KEYS[key.strip().lower()]

    def parse(record: dict, row: int) -> Example:
        turns = record.get(key)
        if turns is None:
            raise DatasetError(f"is missing; every row must use the same format as the first ({schema})",
                               file=name, row=row, field=key)
        if not isinstance(turns, list) or not turns:
            raise DatasetError("must be a non-empty list of turns", file=name, row=row, field=key)
        parsed = [(i, _message(item, name, row, f"{key}[{i}]")) for i, item in enumerate(turns)]
        messages = [(i, m) for i, m in parsed if m is not None]
        system = record.get("system")  # some exports keep the system prompt beside the turns
        if isinstance(system, str) and system.strip() and not (messages and messages[0][1].role == "system"):
            messages.insert(0, (-1, Message("system", system)))
        _check_order(messages, name, row, key)
        return Example(tuple(m for _, m in messages), row)

    return parse


def detect_schema(columns, file_format: str = "jsonl") -> str:
    """alpaca, chat or sharegpt, from a row's column names."""
    key = pick_column(tuple(CHAT_KEYS), columns) if file_format == "jsonl" else None
    return CHAT_KEYS[key.strip().lower()] if key else "alpaca"


def iter_examples(path: str | Path, *, name: str | None = None) -> Iterator[Example]:
    """Every row of the file as an Example, checked as it is read; the
    schema is the first row's."""
    path = Path(path)
    name = name or path.name
    file_format = detect_format(name)
    if file_format == "text":
        raise DatasetError("plain text (.txt) can be used only for continued pre-training; for instruction or "
                           "chat fine-tuning upload a .jsonl or .csv file", file=name)
    parse = None
    for row, record in iter_records(path, name):
        if parse is None:
            key = pick_column(tuple(CHAT_KEYS), record) if file_format == "jsonl" else None  # chat is JSONL only
            parse = _chat_parser(key, name) if key else _pair_parser(tuple(record), name, row, file_format)
        yield parse(record, row)


def read_examples(path: str | Path, *, name: str | None = None) -> list[Example]:
    """Every row of the file as an Example, or DatasetError at the first bad row."""
    return read_all(iter_examples(path, name=name), name or Path(path).name)


def summarize(path: str | Path, *, name: str | None = None, preview_rows: int = 5) -> DatasetSummary:
    """Check the whole file and describe it (for the upload page), holding
    only the preview rows in memory."""
    name = name or Path(path).name
    summary = summarize_rows(path, name, iter_examples(path, name=name), schema="", preview_rows=preview_rows,
                             preview=PreviewRow.of)
    return dataclasses.replace(summary, schema=detect_schema(summary.columns, summary.format))
