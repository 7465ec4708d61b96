"""The ``unpaired`` schema (alias ``kto``): a prompt, one completion and a
label saying whether that completion is desirable, as KTO trains on
(TRL's unpaired preference format: prompt, completion, label). No rejected
reply is needed: good and bad completions may belong to different prompts.

A label is a JSON boolean, 1/0, or one of the words in ``DESIRABLE`` /
``UNDESIRABLE`` (case ignored), so CSV exports of thumbs-up/down feedback
read as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.data.records import text_value
from tuning.data.schemas import Field, RowParser, Schema, optional_text, required_columns
from tuning.errors import DatasetError

HINT = "Unpaired (KTO) data needs prompt, completion and label columns"
DESIRABLE = ("true", "1", "yes", "desirable", "good", "chosen", "positive", "thumbs_up", "up", "👍")
UNDESIRABLE = ("false", "0", "no", "undesirable", "bad", "rejected", "negative", "thumbs_down", "down", "👎")


@dataclass(frozen=True)
class UnpairedCompletion:
    prompt: str
    completion: str
    desirable: bool
    system: str = ""
    row: int | None = None


def read_label(value) -> bool | None:
    """True (desirable), False (undesirable), or None where the value is neither."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in DESIRABLE:
            return True
        if word in UNDESIRABLE:
            return False
    return None


def label_value(record: dict, key: str, file: str, row: int) -> bool:
    desirable = read_label(record.get(key))
    if desirable is None:
        raise DatasetError(f"must say whether the completion is desirable: true or false (also 1/0, "
                           f"desirable/undesirable, good/bad), not {record.get(key)!r}", file=file, row=row, field=key)
    return desirable


def unpaired_parser(schema: Schema, first: dict, file: str, row: int, mapping: dict | None) -> RowParser:
    keys = required_columns(schema.fields, first, file, row, mapping, HINT)
    system = schema.field("system")
    return lambda record, row, file: UnpairedCompletion(
        prompt=text_value(record, keys["prompt"], file, row),
        completion=text_value(record, keys["completion"], file, row),
        desirable=label_value(record, keys["label"], file, row), system=optional_text(record, system, mapping),
        row=row)


UNPAIRED = Schema("unpaired", (
    Field("prompt", ("prompt", "question", "instruction"), help="what the model is asked"),
    Field("completion", ("completion", "response"), help="one reply to it"),
    Field("label", ("label", "desirable"), help="whether that reply is desirable: true or false"),
    Field("system", ("system", "system_prompt"), required=False, help="a system prompt"),
), {"preference": unpaired_parser}, aliases=("kto",))
