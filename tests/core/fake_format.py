"""A dataset format that exists only in the tests, defined in this one file
and registered with one line each (see test_format_registry.py):

- a file format, ``stanza``: records of ``key: value`` lines separated by a
  blank line (as Debian control files are written), extension ``.stanza``;
- a row schema, ``transcript``: one column holding ``Q: question A: answer``,
  recognised by its name or by its values, read for sft as a conversation.
"""

from __future__ import annotations

from collections.abc import Iterator

from tuning.data import sources
from tuning.data.formats import FileFormat
from tuning.data.records import text_value
from tuning.data.schemas import Field, RowParser, Schema, optional_text, required_columns
from tuning.data.schemas.conversation import SYSTEM, Example
from tuning.data.sources import Source, SourceRow
from tuning.errors import DatasetError


def stanza_records(source: Source) -> Iterator[SourceRow]:
    """One record per block of ``key: value`` lines; a blank line ends a block."""
    record, row, start = {}, 0, None
    for number, line in [*sources.source_lines(source), (None, "")]:  # the sentinel ends the last block
        if line.strip():
            key, colon, value = line.partition(":")
            if not colon:
                raise DatasetError("each line must be 'key: value'", file=source.name, row=number)
            record[key.strip()], start = value.strip(), start or number
        elif record:
            row += 1
            yield SourceRow(record, source.name, row, start)
            record, start = {}, None


def _is_transcript(value) -> bool:
    return isinstance(value, str) and value.startswith("Q:") and " A:" in value


def transcript_parser(schema: Schema, first: dict, file: str, row: int, mapping: dict | None) -> RowParser:
    key = required_columns(schema.fields, first, file, row, mapping, "Transcripts read 'Q: ... A: ...'")["transcript"]

    def parse(record: dict, row: int, file: str) -> Example:
        prompt, separator, answer = text_value(record, key, file, row).removeprefix("Q:").partition(" A:")
        if not (separator and prompt.strip() and answer.strip()):
            raise DatasetError("must read 'Q: question A: answer'", file=file, row=row, field=key)
        return Example.from_pair(prompt.strip(), answer.strip(), optional_text(record, SYSTEM, mapping), row)

    return parse


STANZA = FileFormat("stanza", ("stanza",), stanza_records, "stanza")
TRANSCRIPT = Schema("transcript", (Field("transcript", ("transcript",), help="'Q: question A: answer'",
                                         shape=_is_transcript), SYSTEM), {"sft": transcript_parser})
