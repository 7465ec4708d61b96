"""Adding a dataset format is one file and one registration line: the fake
file format and schema of ``fake_format`` are detected the same way by the
web side (``schema.detect``, ``dataset_describe_file``) and by the worker's
readers (``read_examples``, ``tasks.summarize``), and read to canonical
records, with nothing else changed."""

import json

import pytest

from tests.core import fake_format
from tuning.data import formats
from tuning.data.formats import register_file_format, unregister_file_format
from tuning.data.readers import Example, read_examples
from tuning.data.schema import (SCHEMAS, canonical_schema, detect, register_schema, schema_fields, task_rows,
                                unregister_schema)
from tuning.data.tasks import summarize
from tuning.errors import DatasetError

ROWS = [("What is 2+2?", "4"), ("Capital of France?", "Paris"), ("Say hi.", "hi")]
EXPECTED = [Example.from_pair(q, a, row=i) for i, (q, a) in enumerate(ROWS, 1)]


@pytest.fixture
def registered():
    register_file_format(fake_format.STANZA)  # the file format's one registration line
    register_schema(fake_format.TRANSCRIPT)  # the schema's
    yield
    unregister_schema("transcript")
    unregister_file_format("stanza")


def stanza(tmp_path, column="transcript"):
    path = tmp_path / "chat.stanza"
    path.write_text("\n".join(f"id: {i}\n{column}: Q: {q} A: {a}\n" for i, (q, a) in enumerate(ROWS)))
    return path


def web_describe(path, **extra) -> dict:
    # The web process's own entry point: what an upload is stored as (no database is touched).
    from studio.datasets.services import dataset_describe_file

    return dataset_describe_file(path, **extra)


def test_web_and_worker_detect_and_read_a_new_format_the_same(registered, tmp_path):
    path = stanza(tmp_path)
    detection = detect(path)  # what the upload page shows
    assert (detection.schema, detection.confidence) == ("transcript", "sure")
    assert detection.mapping == {"transcript": "transcript"} and detection.tasks == ("sft",)
    described = web_describe(path)
    assert (described["format"], described["detected_schema"], described["schema"]) == ("stanza", "transcript",
                                                                                         "transcript")
    assert described["confirmed"] and described["tasks"] == ["sft"] and described["row_count"] == len(ROWS)
    assert [(row["prompt"], row["response"]) for row in described["preview"]] == ROWS
    # The worker's readers: the same schema, and canonical records.
    assert read_examples(path) == EXPECTED
    assert task_rows("sft", path).schema == "transcript"
    summary = summarize(path, task="sft")
    assert (summary.format, summary.schema, summary.detection) == ("stanza", "transcript", detection)
    assert schema_fields("transcript")[0] == {"name": "transcript", "required": True,
                                              "help": "'Q: question A: answer'"}


def test_the_new_schema_in_a_builtin_format_and_under_another_column_name(registered, tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"log": f"Q: {q} A: {a}", "system": "Be brief."}) + "\n" for q, a in ROWS))
    # Recognised by its values only: unsure on both sides, so nothing is read until a mapping confirms it.
    detection = detect(path)
    assert (detection.schema, detection.confidence, detection.mapping) == ("transcript", "unsure",
                                                                          {"transcript": "log", "system": "system"})
    assert web_describe(path)["confirmed"] is False
    with pytest.raises(DatasetError, match="missing the instruction"):
        read_examples(path)  # read as the task's first schema, whose columns are missing
    examples = read_examples(path, mapping={"transcript": "log"})
    assert [(e.system, e.prompt, e.response) for e in examples] == [("Be brief.", q, a) for q, a in ROWS]
    assert web_describe(path, mapping={"transcript": "log"}, schema="transcript")["row_count"] == len(ROWS)


def test_a_bad_row_of_the_new_format_names_the_file_row_and_field(registered, tmp_path):
    path = tmp_path / "bad.stanza"
    path.write_text("transcript: Q: fine A: yes\n\ntranscript: Q: no answer\n")
    with pytest.raises(DatasetError) as caught:
        read_examples(path)
    assert (caught.value.file, caught.value.row, caught.value.field) == ("bad.stanza", 2, "transcript")
    path.write_text("transcript: Q: fine A: yes\nnot a pair\n")
    with pytest.raises(DatasetError, match="row 2: each line must be 'key: value'"):
        detect(path)


def test_without_the_registration_line_the_format_is_unknown(tmp_path):
    path = stanza(tmp_path)
    assert "transcript" not in SCHEMAS and "stanza" not in formats.FILE_FORMATS
    with pytest.raises(DatasetError, match="unsupported file type '.stanza'"):
        detect(path)
    with pytest.raises(DatasetError, match="unknown schema 'transcript'"):
        canonical_schema("transcript")
