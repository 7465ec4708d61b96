"""Text schemas: ``text`` (one document per row, for continued
pre-training) and ``text+label`` (for classification; its text alone can
be pre-trained on too). A ``.txt``/``.md`` file has no rows: ``pretrain``
cuts it into documents itself.

Labels may be strings or whole numbers: JSON 1, CSV "1" and 1.0 are the
same label, kept as text.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.data.records import text_value
from tuning.data.schemas import Field, RowParser, Schema, required_columns
from tuning.errors import DatasetError

PRETRAIN_HINT = "Continued pre-training reads one document per row from a text column"
CLASSIFY_HINT = "Classification reads a text column and a label column"


@dataclass(frozen=True)
class Document:
    text: str
    row: int  # 1-based: the line a .txt paragraph starts on, or the JSONL/CSV row


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str  # as written in the file, normalised to text
    row: int


def label_text(record: dict, key: str, name: str, row: int) -> str:
    """The row's label as text, or a DatasetError saying what is wrong with it."""
    value = record.get(key)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.0 from a pandas export is the label 1
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    problem = ("is missing" if value is None else "is empty" if isinstance(value, str)
               else "must be text or a whole number")
    raise DatasetError(f"{problem}; give every row one label", file=name, row=row, field=key)


def document_parser(schema: Schema, first: dict, file: str, row: int, mapping: dict | None) -> RowParser:
    """The text field of any schema that has one, as a document to pre-train on."""
    key = required_columns((schema.field("text"),), first, file, row, mapping, PRETRAIN_HINT)["text"]
    return lambda record, row, file: Document(text_value(record, key, file, row), row)


def labelled_parser(schema: Schema, first: dict, file: str, row: int, mapping: dict | None) -> RowParser:
    keys = required_columns(schema.fields, first, file, row, mapping, CLASSIFY_HINT)
    return lambda record, row, file: LabelledText(text_value(record, keys["text"], file, row),
                                                  label_text(record, keys["label"], file, row), row)


TEXT = Schema("text", (Field("text", ("text", "content"), guesses=("document", "body"), help="the text"),),
              {"pretrain": document_parser})
TEXT_LABEL = Schema("text+label", (Field("text", ("text", "sentence", "content"), help="the text"),
                                   Field("label", ("label", "class", "category"), help="the class of the text")),
                    {"classify": labelled_parser, "pretrain": document_parser},
                    aliases=("text_label", "classification"))
