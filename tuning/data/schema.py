"""Which schema a dataset's rows follow: the one detector, for the upload
page (web process) and the readers (worker) alike, driven by one table,
``SCHEMAS``.

Schemas, their canonical fields (required ones first) and the tasks they
suit (each is defined in ``tuning/data/schemas/``):

============  ==========================================  =====================
alpaca        instruction, output [, input, system]        sft
prompt_completion  prompt, completion [, system]           sft
chat          messages (OpenAI role/content) [, system]    sft
sharegpt      conversations (from/value) [, system]        sft
text          text                                         pretrain
text+label    text, label                                  classify, pretrain
preference    prompt, chosen, rejected [, system]          preference, reward
unpaired      prompt, completion, label [, system]         preference (KTO)
============  ==========================================  =====================

The first row decides (every later row must follow it): a column named
exactly as a canonical field is a sure match; an alias (question/answer,
query/response, content/category...) or a column recognised only by its
values is unsure, and so is a tie between schemas: the UI then shows a
column-mapping form. Optional fields are looked for in the first
``SAMPLE_ROWS`` rows. A mapping is ``{canonical_field: source_column}``.

``task_rows`` is how every reader reads: it detects once, picks the schema
the rows are read as (``choose_schema``: a forced schema, else the one the
mapping names, else the detected one where it suits the task, else the
task's first) and yields the task's canonical records. Adding a schema is
one file in ``tuning/data/schemas/`` and one line in ``SCHEMAS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

from tuning.data import formats
from tuning.data.formats import FILE_FORMATS, Source
from tuning.data.records import Paths, dataset_files, mapped_column
from tuning.data.schemas import Schema
from tuning.data.schemas.conversation import ALPACA, CHAT, PROMPT_COMPLETION, SHAREGPT
from tuning.data.schemas.preference import PREFERENCE
from tuning.data.schemas.text import TEXT, TEXT_LABEL
from tuning.data.schemas.unpaired import UNPAIRED
from tuning.errors import DatasetError

__all__ = ["SCHEMAS", "Schema", "Candidate", "Detection", "Rows", "register_schema", "unregister_schema",
           "canonical_schema", "detect_schema", "detect", "detect_sources", "choose_schema", "task_rows",
           "check_mapping", "apply_mapping", "mapped_column", "schema_fields", "tasks_for_schema",
           "schemas_for_task"]

SURE, UNSURE = "sure", "unsure"
SAMPLE_ROWS = 20  # rows looked at to detect the schema

# The table. Order matters: between equally good matches the earlier schema wins, and a task's first
# schema is what its rows are read as when nothing fits (so the error names that schema's columns).
SCHEMAS: dict[str, Schema] = {s.name: s for s in (ALPACA, PROMPT_COMPLETION, CHAT, SHAREGPT, TEXT, TEXT_LABEL,
                                                  PREFERENCE, UNPAIRED)}


def register_schema(schema: Schema) -> None:
    """Add a schema at run time (a plug-in, a test); detection and every reader use it at once."""
    SCHEMAS[schema.name] = schema


def unregister_schema(name: str) -> None:
    SCHEMAS.pop(name, None)


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
        return SCHEMAS[self.schema].tasks if self.schema in SCHEMAS else ()


def canonical_schema(name: str, *, file: str = "") -> str:
    """A schema name as the readers use it; DatasetError for an unknown one."""
    key = name.strip().lower()
    key = next((s.name for s in SCHEMAS.values() if key in s.aliases), key)
    if key not in SCHEMAS:
        raise DatasetError(f"unknown schema '{name}'; choose one of {', '.join(SCHEMAS)}", file=file, field="schema")
    return key


def schema_fields(schema: str) -> list[dict]:
    """The fields of a schema for a column-mapping form: {name, required, help}, required first."""
    return [{"name": f.name, "required": f.required, "help": f.help}
            for f in sorted(SCHEMAS[canonical_schema(schema)].fields, key=lambda f: not f.required)]


def tasks_for_schema(schema: str) -> tuple[str, ...]:
    return SCHEMAS[canonical_schema(schema)].tasks


def schemas_for_task(task: str) -> tuple[str, ...]:
    return tuple(name for name, schema in SCHEMAS.items() if task in schema.tasks)


# --- detection ------------------------------------------------------------------


def _lookup(columns: Sequence[str]) -> dict[str, str]:
    # Matched case- and space-insensitively: "Prompt " is prompt.
    return {column.strip().lower(): column for column in reversed(columns)}


def _holds(rows: Sequence[dict], column: str, shape: Callable[[object], bool]) -> bool:
    return any(shape(row.get(column)) for row in rows)


def _match(schema: Schema, first: dict[str, str], every: dict[str, str],
           rows: Sequence[dict]) -> tuple[Candidate, int] | None:
    """The schema's candidate and how many required fields it fills, or None where one is missing."""
    mapping, sure = {}, True
    for field in (f for f in schema.fields if f.required):
        found = next((first[n] for n in field.names if n in first and first[n] not in mapping.values()), None)
        if found is None and field.shape is not None:
            found = next((c for c in first.values() if c not in mapping.values() and _holds(rows, c, field.shape)),
                         None)
        if found is None:
            return None
        sure = sure and found.strip().lower() == field.names[0]
        if field.shape is not None and rows and not _holds(rows, found, field.shape):
            sure = False  # named like a chat column but not holding turns of this shape (e.g. a CSV string)
        mapping[field.name] = found
    for field in (f for f in schema.fields if not f.required):
        found = next((every[n] for n in field.names if n in every and every[n] not in mapping.values()), None)
        if found is not None:
            mapping[field.name] = found
    return Candidate(schema.name, SURE if sure else UNSURE, mapping), len(schema.required)


def detect_schema(rows: Iterable[dict] | None = None, *, columns: Sequence[str] = ()) -> Detection:
    """The schema of ``rows`` (the first few records), or of bare ``columns``."""
    rows = list(rows or ())
    names = list(dict.fromkeys([*columns, *(key for row in rows for key in row)]))
    first = _lookup(list(dict.fromkeys([*columns, *(rows[0] if rows else ())])))
    every = _lookup(names)
    found = [match for schema in SCHEMAS.values() if (match := _match(schema, first, every, rows))]
    # Best: sure before unsure, then the schema using more of the columns (text+label over text), then
    # table order (sort is stable).
    found.sort(key=lambda match: (match[0].confidence != SURE, -match[1]))
    candidates = tuple(candidate for candidate, _ in found)
    if not candidates:
        return Detection("", UNSURE, tuple(names), {}, ())
    best = candidates[0]
    tied = [c for c, size in found[1:] if c.confidence == best.confidence and size == found[0][1]]
    confidence = UNSURE if tied else best.confidence
    return Detection(best.schema, confidence, tuple(names), dict(best.mapping), candidates)


def detect_sources(sources: Sequence[Source], *, sample_rows: int = SAMPLE_ROWS) -> Detection:
    """The schema of these files, from their first ``sample_rows`` records."""
    with_records = [source for source in sources if FILE_FORMATS[source.format].records is not None]
    if not with_records:
        return Detection("text", SURE, (), {}, (Candidate("text", SURE, {}),))  # plain text: no columns to map
    records = (row.data for source in with_records for row in formats.source_records(source))
    sample = []
    try:
        sample.extend(islice(records, sample_rows))
    except DatasetError:
        if not sample:
            raise  # nothing readable: the reason is the answer
        # A bad row among the first few: detect from the rows before it; reading the data reports the row.
    return detect_schema(sample)


def detect(paths, *, names: Sequence[str] | None = None, sample_rows: int = SAMPLE_ROWS) -> Detection:
    """The schema of a dataset on disk (one path, or several read as one)."""
    return detect_sources(list(formats.iter_sources(paths, names)), sample_rows=sample_rows)


# --- mappings -------------------------------------------------------------------


def check_mapping(mapping: dict[str, str], columns: Sequence[str], *, schema: str = "", file: str = "") -> dict:
    """The mapping, checked: canonical fields the schema has (any schema's
    fields when none is given), pointing at columns the file has."""
    chosen = [SCHEMAS[canonical_schema(schema, file=file)]] if schema else SCHEMAS.values()
    known = {f.name for s in chosen for f in s.fields}
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


# --- reading --------------------------------------------------------------------


def choose_schema(task: str, detection: Detection, *, schema: str | None = None,
                  mapping: dict[str, str] | None = None, file: str = "") -> Schema:
    """The schema the rows are read as for ``task``: the one the user forced, else the one whose required
    fields the mapping names (most of them; table order breaks ties), else the best detected candidate
    that suits the task, else the task's first schema (whose reader then names the missing columns)."""
    suited = schemas_for_task(task)
    if not suited:
        raise DatasetError(f"no schema suits the task '{task}'", file=file, field="task")
    if schema:
        name = canonical_schema(schema, file=file)
        if name not in suited:
            raise DatasetError(f"the {name} schema cannot be used for {task}; for {task} use {', '.join(suited)}",
                               file=file, field="schema")
        return SCHEMAS[name]
    if mapping:
        def named(name: str) -> tuple[bool, int]:
            required = SCHEMAS[name].required
            return all(f in mapping for f in required), sum(f in mapping for f in required)
        return SCHEMAS[max(suited, key=named)]  # max keeps the first of equals
    # A candidate found by an alias or by its values is only a proposal (the UI asks the user to confirm it
    # with a mapping): without one, read the schema whose columns are named as its reader reads them.
    readable = (c.schema for c in detection.candidates if c.schema in suited and _readable(c))
    return SCHEMAS[next(readable, suited[0])]


def _readable(candidate: Candidate) -> bool:
    """The candidate's required columns are among those its fields read without a mapping."""
    fields = SCHEMAS[candidate.schema].fields
    return all(candidate.mapping.get(f.name, "").strip().lower() in f.columns for f in fields if f.required)


@dataclass(frozen=True)
class Rows:
    """A dataset being read for a task: how it was detected, the schema it is read as, and its records."""

    schema: str
    detection: Detection
    records: Iterator  # the task's canonical records, checked as they are read


def task_rows(task: str, path: Paths, *, name: str | None = None, schema: str | None = None,
              mapping: dict[str, str] | None = None,
              plain_text: Callable[[Source], Iterator] | None = None) -> Rows:
    """Every row of the dataset (one file, a zip, or a list of files) as ``task``'s canonical record.
    ``plain_text(source)`` reads a file without records (.txt); without it such a file is refused."""
    paths, names, label = dataset_files(path, name)
    sources = list(formats.iter_sources(paths, names))
    detection = detect_sources(sources)
    chosen = choose_schema(task, detection, schema=schema, mapping=mapping or None, file=label)
    return Rows(chosen.name, detection, _records(task, chosen, sources, mapping or None, plain_text))


def _records(task: str, schema: Schema, sources: Sequence[Source], mapping: dict[str, str] | None,
             plain_text: Callable[[Source], Iterator] | None) -> Iterator:
    parse = None
    for source in sources:
        if plain_text is not None and FILE_FORMATS[source.format].records is None:
            yield from plain_text(source)
            continue
        _check_cells(schema, source)
        for item in formats.source_records(source):
            if parse is None:  # the first row of the first file decides the columns; later rows follow it
                if mapping:
                    # Optional fields may be left out of a JSONL row, so only their names are checked.
                    optional = tuple(mapping[f] for f in schema.optional if f in mapping)
                    check_mapping(mapping, (*item.data, *optional), schema=schema.name, file=item.file)
                parse = schema.parsers[task](schema, item.data, item.file, item.row, mapping)
            yield parse(item.data, item.row, item.file)


def _check_cells(schema: Schema, source: Source) -> None:
    """A schema whose values are lists (chat turns) cannot come from a format of text cells (CSV)."""
    fmt = FILE_FORMATS[source.format]
    nested = next((f.name for f in schema.fields if f.required and f.nested), None)
    if nested and not fmt.nested:
        raise DatasetError(f"{schema.name} data must be uploaded as {formats.nested_titles()}: its {nested} column "
                           f"holds lists, which {fmt.title} cannot", file=source.name)
