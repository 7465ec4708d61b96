"""The ``preference`` schema: a prompt, the reply to prefer and the reply to
avoid (optional ``system``; the prompt may also be called question or
instruction). ``chosen`` and ``rejected`` are text, or a list of chat turns
({"role", "content"}) as in exports that keep whole conversations: the
reply is then the last assistant turn's text.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.data.records import text_value
from tuning.data.schemas import Field, RowParser, Schema, optional_text, required_columns
from tuning.errors import DatasetError

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


def pair_parser(schema: Schema, first: dict, file: str, row: int, mapping: dict | None) -> RowParser:
    keys = required_columns(schema.fields, first, file, row, mapping, HINT)
    system = schema.field("system")
    return lambda record, row, file: PreferencePair(
        prompt=text_value(record, keys["prompt"], file, row), chosen=_reply(record, keys["chosen"], file, row),
        rejected=_reply(record, keys["rejected"], file, row), system=optional_text(record, system, mapping),
        row=row)


PREFERENCE = Schema("preference", (
    Field("prompt", ("prompt", "question", "instruction"), help="what the model is asked"),
    Field("chosen", ("chosen",), help="the preferred reply"),
    Field("rejected", ("rejected",), help="the reply to avoid"),
    Field("system", ("system", "system_prompt"), required=False, help="a system prompt"),
), {"preference": pair_parser}, aliases=("pairs",))
