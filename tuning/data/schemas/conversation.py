"""Conversation schemas, read for supervised fine-tuning (task ``sft``):
every row becomes an ``Example``, a conversation.

- ``alpaca``: ``instruction`` [+ ``input``] + ``output``, optional ``system``;
  ``prompt_completion``: prompt + completion (also prompt/response,
  question/answer, query/response). Both are read by one parser that takes
  either spelling, so a file mixing them (prompt + output) still reads.
- ``chat`` (OpenAI): ``messages``: [{"role", "content"}], roles system, user,
  assistant; an assistant message with ``"weight": 0`` is context only.
- ``sharegpt``: ``conversations``: [{"from", "value"}], from human, gpt,
  system (user and assistant work too). Chat rows need lists, so not CSV/TSV.

A conversation is: an optional system message first, then a user turn, and
it ends on an assistant turn. Every problem names the file, the row and the
field (``messages[2].role`` counts turns from 0, as in the JSON).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.data.records import resolve_column, text_value
from tuning.data.schemas import Field, RowParser, Schema, columns_of, optional_text
from tuning.errors import DatasetError

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


def _turns_of(keys: tuple[str, str]):
    """A value test: a non-empty list of turns whose first has these keys (role/content, from/value)."""
    def holds(value) -> bool:
        return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and all(k in value[0]
                                                                                          for k in keys)
    return holds


SYSTEM = Field("system", ("system", "system_prompt"), required=False, help="a system prompt")
INSTRUCTION = Field("instruction", ("instruction",), help="the task or question")
OUTPUT = Field("output", ("output", "response", "completion", "answer", "reply"), help="the answer to train on")
INPUT = Field("input", ("input", "context"), required=False, help="extra context appended to the instruction")
PROMPT = Field("prompt", ("prompt", "question", "query"), help="what the model is asked")
COMPLETION = Field("completion", ("completion", "response", "answer", "reply", "output"),
                   help="the answer to train on")
MESSAGES = Field("messages", ("messages",), help="a list of {role, content} turns",
                 shape=_turns_of(("role", "content")), nested=True)
CONVERSATIONS = Field("conversations", ("conversations",), help="a list of {from, value} turns",
                      shape=_turns_of(("from", "value")), nested=True)
# The pair parser reads either spelling of a prompt and of a response, in this order of preference.
PROMPT_KEYS = columns_of((INSTRUCTION, PROMPT))
RESPONSE_KEYS = columns_of((OUTPUT, COMPLETION))


def pair_parser(schema: Schema, first: dict, file: str, row: int, mapping: dict | None) -> RowParser:
    """alpaca and prompt_completion: a prompt column and a response column."""
    hint = "Rename your columns to instruction and output, or give a column mapping"
    prompt_key = resolve_column(("instruction", "prompt"), PROMPT_KEYS, first, file, mapping=mapping, row=row,
                                hint=hint)
    response_key = resolve_column(("output", "completion", "response"), RESPONSE_KEYS, first, file,
                                  mapping=mapping, row=row, hint=hint)

    def parse(record: dict, row: int, file: str) -> Example:
        prompt = text_value(record, prompt_key, file, row)
        response = text_value(record, response_key, file, row)
        if extra := optional_text(record, INPUT, mapping):
            prompt = f"{prompt}\n\n{extra}"
        return Example.from_pair(prompt, response, optional_text(record, SYSTEM, mapping), row)

    return parse


def parse_message(item, name: str, row: int, where: str) -> Message | None:
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


def check_order(messages: list[tuple[int, Message]], name: str, row: int, key: str,
                role_key: str = "role") -> None:
    """An optional system message first, then a user turn; the last turn is the assistant's. ``role_key``
    is the field the file names the speaker with (ShareGPT's ``from``), so the message names it too."""
    def error(index: int, message: str) -> DatasetError:
        # index -1: the conversation as a whole (or a system prompt given beside it)
        return DatasetError(message, file=name, row=row,
                            field=f"{key}[{index}].{role_key}" if index >= 0 else key)

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


def turns_parser(schema: Schema, first: dict, file: str, row: int, mapping: dict | None) -> RowParser:
    """chat and sharegpt: one column holding the list of turns (the schema's one required field)."""
    field = next(f.name for f in schema.fields if f.required)
    key = resolve_column((field,), (field,), first, file, mapping=mapping, row=row,
                         hint=f"{schema.name} data keeps its turns in a {field} column")

    def parse(record: dict, row: int, name: str) -> Example:
        turns = record.get(key)
        if turns is None:
            raise DatasetError(f"is missing; every row must use the same format as the first ({schema.name})",
                               file=name, row=row, field=key)
        if not isinstance(turns, list) or not turns:
            raise DatasetError("must be a non-empty list of turns", file=name, row=row, field=key)
        parsed = [(i, parse_message(item, name, row, f"{key}[{i}]")) for i, item in enumerate(turns)]
        messages = [(i, m) for i, m in parsed if m is not None]
        system = optional_text(record, SYSTEM, mapping)  # some exports keep the system prompt beside the turns
        if system and not (messages and messages[0][1].role == "system"):
            messages.insert(0, (-1, Message("system", system)))
        spelling = turns[0] if isinstance(turns[0], dict) else {}
        check_order(messages, name, row, key, role_key="from" if "from" in spelling and "role" not in spelling
                    else "role")
        return Example(tuple(m for _, m in messages), row)

    return parse


# grpo: the same rows as prompts with reference answers (tuning.data.prompts).
ALPACA = Schema("alpaca", (INSTRUCTION, OUTPUT, INPUT, SYSTEM), {"sft": pair_parser, "grpo": pair_parser})
PROMPT_COMPLETION = Schema("prompt_completion", (PROMPT, COMPLETION, INPUT, SYSTEM), {"sft": pair_parser,
                                                                                    "grpo": pair_parser},
                           aliases=("prompt/completion",))
CHAT = Schema("chat", (MESSAGES, SYSTEM), {"sft": turns_parser, "grpo": turns_parser}, aliases=("messages", "openai"))
SHAREGPT = Schema("sharegpt", (CONVERSATIONS, SYSTEM), {"sft": turns_parser, "grpo": turns_parser},
                  aliases=("conversations",))
