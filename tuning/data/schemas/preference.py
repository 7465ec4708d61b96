"""The ``preference`` schema: a prompt, the reply to prefer and the reply to
avoid (optional ``system``; the prompt may also be called question or
instruction). ``chosen`` and ``rejected`` are text, or a list of chat turns
({"role", "content"}) as in exports that keep whole conversations: the
reply is then the last assistant turn's text. Without a prompt column the
conversations carry the prompt too: the turns before the chosen reply
(which the rejected conversation must share) become the pair's ``context``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.data.records import pick_column, text_value
from tuning.data.schemas import Field, RowParser, Schema, optional_text, required_columns
from tuning.data.schemas.conversation import Message, check_order, parse_message
from tuning.errors import DatasetError

HINT = "Preference data needs prompt, chosen and rejected columns"


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    system: str = ""
    row: int | None = None
    # The turns before the reply (system, user, assistant …, ending on the user's), where the
    # conversations carry them; empty where the prompt (and system) columns do.
    context: tuple[Message, ...] = ()


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


def _conversation(record: dict, key: str, file: str, row: int) -> tuple[tuple[Message, ...], str]:
    """(the turns before the last assistant turn, that turn's text) of a conversation column."""
    value = record.get(key)
    if not isinstance(value, list):
        raise DatasetError("must be a list of turns when there is no prompt column (the turns before the reply "
                           "are the prompt)", file=file, row=row, field=key)
    parsed = [(i, parse_message(item, file, row, f"{key}[{i}]")) for i, item in enumerate(value)]
    messages = [(i, m) for i, m in parsed if m is not None]
    check_order(messages, file, row, key)  # so the last turn is the assistant's
    *context, (_, reply) = messages
    return tuple(m for _, m in context), reply.content


def pair_parser(schema: Schema, first: dict, file: str, row: int, mapping: dict | None) -> RowParser:
    keys = required_columns(schema.fields, first, file, row, mapping, HINT)
    system = schema.field("system")
    prompt = (mapping or {}).get("prompt") or pick_column(schema.field("prompt").columns, first)
    if prompt is not None:
        return lambda record, row, file: PreferencePair(
            prompt=text_value(record, prompt, file, row), chosen=_reply(record, keys["chosen"], file, row),
            rejected=_reply(record, keys["rejected"], file, row), system=optional_text(record, system, mapping),
            row=row)
    if not isinstance(first.get(keys["chosen"]), list):
        raise DatasetError(f"{HINT}, or chosen and rejected as conversations that hold the prompt",
                           file=file, row=row, field="prompt")

    def from_conversations(record: dict, row: int, file: str) -> PreferencePair:
        context, chosen = _conversation(record, keys["chosen"], file, row)
        rejected_context, rejected = _conversation(record, keys["rejected"], file, row)
        if rejected_context != context:
            raise DatasetError(f"the turns before the rejected reply differ from those before the chosen one; "
                               f"both conversations must share the prompt", file=file, row=row, field=keys["rejected"])
        users = [m.content for m in context if m.role == "user"]
        systems = [m.content for m in context if m.role == "system"]
        return PreferencePair(prompt=users[-1], chosen=chosen, rejected=rejected,
                              system=systems[0] if systems else "", row=row, context=context)

    return from_conversations


PREFERENCE = Schema("preference", (
    Field("chosen", ("chosen",), help="the preferred reply"),
    Field("rejected", ("rejected",), help="the reply to avoid"),
    Field("prompt", ("prompt", "question", "instruction"), required=False,
          help="what the model is asked (leave it out where chosen and rejected are whole conversations)"),
    Field("system", ("system", "system_prompt"), required=False, help="a system prompt"),
), {"preference": pair_parser, "reward": pair_parser}, aliases=("pairs",))
