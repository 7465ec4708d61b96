"""Which schema a dataset's rows follow, guessed from their columns, for the
upload page to show and the user to confirm (or correct with a mapping).

Schemas, their canonical fields (required ones first) and the tasks they
suit:

============  ==========================================  =====================
alpaca        instruction, output [, input, system]        sft
prompt_completion  prompt, completion [, system]           sft
chat          messages (OpenAI role/content) [, system]    sft
sharegpt      conversations (from/value) [, system]        sft
text          text                                         pretrain
text+label    text, label                                  classify, pretrain
preference    prompt, chosen, rejected [, system]          preference
============  ==========================================  =====================

("messages" and "conversations" are accepted as names of chat and
sharegpt.) A column named exactly as a canonical field is a sure match; an
alias (question/answer, query/response, content/category...) or a column
recognised only by its values is unsure, and so is a tie between schemas:
the UI then shows a column-mapping form. A mapping is
``{canonical_field: source_column}``; the readers accept it as ``mapping=``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice

from tuning.errors import DatasetError

__all__ = ["SCHEMAS", "SCHEMA_TASKS", "Candidate", "Detection", "canonical_schema", "detect_schema",
           "detect", "check_mapping", "apply_mapping", "mapped_column", "schema_fields", "tasks_for_schema",
           "schemas_for_task"]

SURE, UNSURE = "sure", "unsure"
SAMPLE_ROWS = 20  # rows looked at to detect the schema


@dataclass(frozen=True)
class Spec:
    required: dict[str, tuple[str, ...]]  # canonical field -> accepted column names, the canonical one first
    optional: dict[str, tuple[str, ...]] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()
    list_field: str = ""  # a field whose values are lists of turns (chat schemas)


SYSTEM = {"system": ("system", "system_prompt")}
SCHEMAS: dict[str, Spec] = {
    "alpaca": Spec({"instruction": ("instruction",), "output": ("output", "response", "completion", "answer")},
                   {"input": ("input", "context"), **SYSTEM}, ("sft",)),
    "prompt_completion": Spec({"prompt": ("prompt", "question", "query"),
                               "completion": ("completion", "response", "answer", "reply", "output")},
                              dict(SYSTEM), ("sft",)),
    "chat": Spec({"messages": ("messages",)}, dict(SYSTEM), ("sft",), list_field="messages"),
    "sharegpt": Spec({"conversations": ("conversations",)}, dict(SYSTEM), ("sft",), list_field="conversations"),
    "text": Spec({"text": ("text", "content", "document", "body")}, {}, ("pretrain",)),
    "text+label": Spec({"text": ("text", "sentence", "content"), "label": ("label", "class", "category")}, {},
                       ("classify", "pretrain")),
    "preference": Spec({"prompt": ("prompt", "question", "instruction"), "chosen": ("chosen",),
                        "rejected": ("rejected",)}, dict(SYSTEM), ("preference",)),
}
SCHEMA_TASKS = {name: spec.tasks for name, spec in SCHEMAS.items()}
ALIASES = {"messages": "chat", "openai": "chat", "conversations": "sharegpt", "prompt/completion": "prompt_completion",
           "text_label": "text+label", "classification": "text+label", "pairs": "preference"}
# Turn keys that give away a chat column by its values, whatever it is called.
TURN_KEYS = {"chat": ("role", "content"), "sharegpt": ("from", "value")}


@dataclass(frozen=True)
class Candidate:
    schema: str
    confidence: str  # "sure" or "unsure"
    mapping: dict[str, str]  # canonical field -> column


@dataclass(frozen=True)
class Detection:
    """What the upload page shows for confirmation. ``schema`` is "" when no
    schema fits; ``candidates`` lists every schema that fits, best first."""

    schema: str
    confidence: str
    columns: tuple[str, ...]
    mapping: dict[str, str]
    candidates: tuple[Candidate, ...] = ()

    @property
    def tasks(self) -> tuple[str, ...]:
        return SCHEMA_TASKS.get(self.schema, ())


def canonical_schema(name: str, *, file: str = "") -> str:
    """A schema name as the readers use it; DatasetError for an unknown one."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in SCHEMAS:
        raise DatasetError(f"unknown schema '{name}'; choose one of {', '.join(SCHEMAS)}", file=file, field="schema")
    return key


FIELD_HELP = {
    "instruction": "the task or question", "input": "extra context appended to the instruction",
    "output": "the answer to train on", "prompt": "what the model is asked", "completion": "the answer to train on",
    "system": "a system prompt", "messages": "a list of {role, content} turns",
    "conversations": "a list of {from, value} turns", "text": "the text", "label": "the class of the text",
    "chosen": "the preferred reply", "rejected": "the reply to avoid",
}


def schema_fields(schema: str) -> list[dict]:
    """The fields of a schema for a column-mapping form: {name, required, help}, required first."""
    spec = SCHEMAS[canonical_schema(schema)]
    return [{"name": name, "required": required, "help": FIELD_HELP.get(name, "")}
            for required, fields in ((True, spec.required), (False, spec.optional)) for name in fields]


def tasks_for_schema(schema: str) -> tuple[str, ...]:
    return SCHEMA_TASKS[canonical_schema(schema)]


def schemas_for_task(task: str) -> tuple[str, ...]:
    return tuple(name for name, spec in SCHEMAS.items() if task in spec.tasks)


def _lookup(columns: Sequence[str]) -> dict[str, str]:
    # Matched case- and space-insensitively: "Prompt " is prompt.
    return {column.strip().lower(): column for column in reversed(columns)}


def _turn_shape(rows: Sequence[dict], column: str) -> str | None:
    """chat or sharegpt when the column's values are lists of turns of that shape."""
    for row in rows:
        value = row.get(column)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for schema, keys in TURN_KEYS.items():
                if all(key in value[0] for key in keys):
                    return schema
    return None


def _match(name: str, spec: Spec, lookup: dict[str, str], rows: Sequence[dict]) -> tuple[Candidate, int] | None:
    mapping, sure = {}, True
    for canonical, names in spec.required.items():
        found = next((lookup[n] for n in names if n in lookup and lookup[n] not in mapping.values()), None)
        if found is None and spec.list_field == canonical:
            found = next((c for c in lookup.values() if _turn_shape(rows, c) == name and c not in mapping.values()),
                         None)
        if found is None:
            return None
        sure = sure and found.strip().lower() == names[0]
        mapping[canonical] = found
    if spec.list_field and rows and _turn_shape(rows, mapping[spec.list_field]) != name:
        sure = False  # named like a chat column but not holding turns of this shape (e.g. a CSV string)
    for canonical, names in spec.optional.items():
        found = next((lookup[n] for n in names if n in lookup and lookup[n] not in mapping.values()), None)
        if found is not None:
            mapping[canonical] = found
    return Candidate(name, SURE if sure else UNSURE, mapping), len(spec.required)


def detect_schema(rows: Iterable[dict] | None = None, *, columns: Sequence[str] = ()) -> Detection:
    """The schema of ``rows`` (the first few records), or of bare ``columns``."""
    rows = list(rows or ())
    names = list(dict.fromkeys([*columns, *(key for row in rows for key in row)]))
    lookup = _lookup(names)
    found = [match for name, spec in SCHEMAS.items() if (match := _match(name, spec, lookup, rows))]
    # Best: sure before unsure, then the schema using more of the columns
    # (text+label over text), then table order.
    found.sort(key=lambda match: (match[0].confidence != SURE, -match[1]))
    candidates = tuple(candidate for candidate, _ in found)
    if not candidates:
        return Detection("", UNSURE, tuple(names), {}, ())
    best = candidates[0]
    tied = [c for c, size in found[1:] if c.confidence == best.confidence and size == found[0][1]]
    confidence = UNSURE if tied else best.confidence
    return Detection(best.schema, confidence, tuple(names), dict(best.mapping), candidates)


def detect(paths, *, names: Sequence[str] | None = None, sample_rows: int = SAMPLE_ROWS) -> Detection:
    """The schema of a dataset on disk, from its first ``sample_rows`` records."""
    from tuning.data import formats

    sources = list(formats.iter_sources(paths, names))
    if all(source.format == "text" for source in sources):
        return Detection("text", SURE, (), {}, (Candidate("text", SURE, {}),))
    records = (row.data for source in sources if source.format != "text" for row in formats.source_records(source))
    sample = []
    try:
        sample.extend(islice(records, sample_rows))
    except DatasetError:
        if not sample:
            raise  # nothing readable: the reason is the answer
        # A bad row among the first few: detect from the rows before it; reading the data reports the row.
    return detect_schema(sample)


def check_mapping(mapping: dict[str, str], columns: Sequence[str], *, schema: str = "", file: str = "") -> dict:
    """The mapping, checked: canonical fields the schema has (any schema's
    fields when none is given), pointing at columns the file has."""
    known = ({f for spec in SCHEMAS.values() for f in (*spec.required, *spec.optional)} if not schema
             else {*SCHEMAS[canonical_schema(schema, file=file)].required,
                   *SCHEMAS[canonical_schema(schema, file=file)].optional})
    listed = ", ".join(columns) or "none"
    for canonical, column in mapping.items():
        if canonical not in known:
            raise DatasetError(f"'{canonical}' is not a field of {schema or 'any schema'}; map one of "
                               f"{', '.join(sorted(known))}", file=file, field=canonical)
        if not isinstance(column, str) or column not in columns:
            raise DatasetError(f"the mapping reads {canonical} from column {column!r}, which the file does not "
                               f"have; choose one of: {listed}", file=file, row=1, field=canonical)
    return dict(mapping)


def apply_mapping(record: dict, mapping: dict[str, str]) -> dict:
    """The record with each mapped column renamed to its canonical field
    (other columns kept; a mapped field replaces a column of that name)."""
    renamed = {key: value for key, value in record.items() if key not in mapping.values() and key not in mapping}
    for canonical, column in mapping.items():
        if column in record:
            renamed[canonical] = record[column]
    return renamed


def mapped_column(mapping: dict[str, str] | None, *fields: str) -> str | None:
    """The column a mapping gives for the first of ``fields`` it maps."""
    return next((mapping[f] for f in fields if mapping and f in mapping), None)
