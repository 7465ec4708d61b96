"""Property-based: whatever bytes arrive (truncated, mis-encoded, mis-typed,
oversized, junk), every format gives either valid records or a DatasetError
that names the file (and the row where it has one), never another exception."""

import io
import json
import string
import tempfile
import zipfile
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuning.data import sources
from tuning.data.readers import Example
from tuning.data.tasks import summarize
from tuning.errors import DatasetError

# No example database: it would write a .hypothesis folder into the checkout.
FUZZ = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TASKS = ("sft", "pretrain", "classify", "preference", "reward", "grpo")
NAMES = ("d.jsonl", "d.json", "d.csv", "d.tsv", "d.txt", "d.parquet", "d.zip")

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                           max_leaves=8)
# Rows with the columns of every schema, holding any JSON value: many are mis-typed.
rows = st.lists(st.fixed_dictionaries({}, optional={
    key: json_values | text for key in ("instruction", "output", "prompt", "completion", "text", "label", "chosen",
                                        "rejected", "messages", "system")}), min_size=1, max_size=5)
good_rows = st.lists(st.fixed_dictionaries({
    "text": st.text(string.ascii_letters + " éü,\"\n\t", min_size=1, max_size=20).filter(str.strip),
    "label": st.sampled_from(["a", "b"])}), min_size=2, max_size=6)


def encode(name: str, records: list[dict]) -> bytes:
    """``records`` written in the format ``name`` says, however odd their values."""
    suffix = Path(name).suffix
    if suffix == ".jsonl":
        return "".join(json.dumps(r) + "\n" for r in records).encode()
    if suffix == ".json":
        return json.dumps(records).encode()
    if suffix in (".csv", ".tsv"):
        import csv

        out = io.StringIO()
        columns = list(dict.fromkeys(k for r in records for k in r)) or ["text"]
        writer = csv.DictWriter(out, columns, dialect="excel-tab" if suffix == ".tsv" else "excel")
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if not isinstance(v, str) else v for k, v in r.items()} for r in records)
        return out.getvalue().encode()
    if suffix == ".txt":
        return "\n\n".join(str(r.get("text", r)) for r in records).encode()
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = io.BytesIO()
        table = pa.Table.from_pylist([{k: json.dumps(v) for k, v in r.items()} for r in records])
        pq.write_table(table, out)
        return out.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("inner.jsonl", encode("x.jsonl", records))
    return out.getvalue()


def check(name: str, content: bytes, tasks=TASKS) -> list:
    """Summarize ``content`` as ``name`` for every task: a summary, or a DatasetError naming the file."""
    results = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        for task in tasks:
            try:
                results.append(summarize(path, task=task))
            except DatasetError as error:
                assert error.file == name or error.file.startswith(f"{name}/"), (task, error)
                assert str(error).startswith(error.file)
                assert error.row is None or error.row >= 1
                assert error.reason.strip()
                results.append(error)
    return results


@FUZZ
@given(name=st.sampled_from(NAMES), content=st.binary(max_size=300))
def test_junk_bytes(name, content):
    check(name, content)


@FUZZ
@given(name=st.sampled_from(NAMES), records=rows)
def test_mistyped_values(name, records):
    for result in check(name, encode(name, records)):
        if not isinstance(result, DatasetError):
            assert result.row_count >= 1 and result.preview


@FUZZ
@given(name=st.sampled_from(NAMES), records=good_rows, cut=st.floats(0, 1))
def test_truncated_files(name, records, cut):
    content = encode(name, records)
    check(name, content[:int(len(content) * cut)], tasks=("classify", "pretrain"))


@FUZZ
@given(name=st.sampled_from(("d.jsonl", "d.csv", "d.tsv", "d.txt", "d.json")), records=good_rows,
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "latin-1", "cp1252",
                                 "utf-32", "cp500"]))
def test_misencoded_files(name, records, encoding):
    source = encode(name, records).decode()
    try:
        content = source.encode(encoding)
    except UnicodeEncodeError:
        content = source.encode(encoding, errors="replace")
    for result in check(name, content, tasks=("classify",) if name != "d.txt" else ("pretrain",)):
        if not isinstance(result, DatasetError) and encoding in ("utf-8", "utf-8-sig", "utf-16", "utf-32"):
            # A BOM or valid UTF-8 says the encoding: what is read is what was written.
            assert [p.text for p in result.preview] == [r["text"] for r in records][:5] or name == "d.txt"


@FUZZ
@given(name=st.sampled_from(("d.jsonl", "d.json", "d.csv", "d.txt", "d.parquet", "d.zip")), records=good_rows,
       size=st.integers(1, 60))
def test_oversized_values(name, records, size):
    # every text over the cap, its first line too (a text of short lines, "A\nA\n...", is short lines in a .txt)
    records = [dict(r, text="x" * (size + 1) + r["text"]) for r in records]
    with mock.patch.object(sources, "MAX_LINE_BYTES", size):
        results = check(name, encode(name, records), tasks=("pretrain",))
    error = results[0]
    assert isinstance(error, DatasetError) and ("longer than" in error.reason or "empty" in error.reason)


@FUZZ
@given(records=good_rows, cut=st.integers(1, 40))
def test_truncated_jsonl_names_the_cut_line(records, cut):
    content = encode("d.jsonl", records)
    cut_at = max(content.rfind(b"\n", 0, len(content) - 1) + 1 + cut, 0)  # inside the last line
    if cut_at >= len(content) - 1:
        return
    error = check("d.jsonl", content[:cut_at], tasks=("classify",))[0]
    assert isinstance(error, DatasetError) and error.row == len(records), error


def test_example_records_are_what_the_readers_yield():
    # Guards the property tests above: a valid file gives Example rows, not errors.
    good = encode("d.jsonl", [{"instruction": "q", "output": "a"}])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "d.jsonl"
        path.write_bytes(good)
        from tuning.data.readers import read_examples

        assert read_examples(path) == [Example.from_pair("q", "a", row=1)]
