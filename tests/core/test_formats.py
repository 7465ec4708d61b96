"""Formats, encodings, archives and the limits that keep bad input out."""

import codecs
import json
import tracemalloc
import zipfile

import pytest

from tuning.data import formats, parsers, sources
from tuning.data.formats import count_lines, describe, detect_encoding, iter_rows
from tuning.data.readers import read_examples
from tuning.data.tasks import summarize
from tuning.errors import DatasetError

PAIR = {"instruction": "Grüße, café", "output": "Ça va? ñ"}


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def jsonl(*rows) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def refused(path, task="sft", **kwargs) -> DatasetError:
    with pytest.raises(DatasetError) as caught:
        summarize(path, task=task, **kwargs)
    return caught.value


# --- encodings ------------------------------------------------------------------


@pytest.mark.parametrize("encoding, bom, reported", [
    ("utf-8", b"", "utf-8"),
    ("utf-8", codecs.BOM_UTF8, "utf-8-sig"),
    ("utf-16-le", codecs.BOM_UTF16_LE, "utf-16-le"),
    ("utf-16-be", codecs.BOM_UTF16_BE, "utf-16-be"),
    ("utf-32-le", codecs.BOM_UTF32_LE, "utf-32-le"),
    ("latin-1", b"", "latin-1"),
])
@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "d.json"])
def test_encodings_are_detected_reported_and_decoded(tmp_path, encoding, bom, reported, name):
    if name.endswith(".csv"):
        text = "instruction,output\r\n" + f"\"{PAIR['instruction']}\",{PAIR['output']}\r\n" * 2
    elif name.endswith(".json"):
        text = json.dumps([PAIR, PAIR], ensure_ascii=False)
    else:
        text = jsonl(PAIR, PAIR)
    path = write(tmp_path, name, bom + text.encode(encoding))
    examples = read_examples(path)
    assert [(e.prompt, e.response) for e in examples] == [(PAIR["instruction"], PAIR["output"])] * 2
    summary = summarize(path)
    assert summary.encoding == reported and summary.row_count == 2
    assert summary.sources[0].encoding == reported


def test_detect_encoding_prefers_a_bom_then_utf8_then_latin1():
    assert detect_encoding(codecs.BOM_UTF16_LE + "x".encode("utf-16-le")) == ("utf-16-le", 2)
    assert detect_encoding("é".encode()) == ("utf-8", 0)
    cut = b"a" * (sources.SNIFF_BYTES - 1) + "é".encode()[:1]
    assert detect_encoding(cut) == ("utf-8", 0)  # a character cut by the end of the sample
    assert detect_encoding("é".encode("latin-1")) == ("latin-1", 0)
    with pytest.raises(DatasetError, match="binary file"):
        detect_encoding("x".encode("utf-16-le"), "a.jsonl")  # UTF-16 without a BOM looks like binary
    with pytest.raises(DatasetError, match="binary file"):
        detect_encoding(bytes(range(1, 32)) * 4, "a.jsonl")  # control characters, no NUL


def test_a_bad_utf16_sequence_names_the_file(tmp_path):
    path = write(tmp_path, "d.jsonl", codecs.BOM_UTF16_LE + jsonl(PAIR).encode("utf-16-le") + b"\x00\xd8")
    error = refused(path)
    assert error.file == "d.jsonl" and "not valid UTF-16-LE text" in error.reason


# --- JSON arrays ----------------------------------------------------------------


def test_json_array_elements_across_read_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(parsers, "READ_CHUNK", 7)  # every element spans several reads
    rows = [{"instruction": f"q{i}" * 20, "output": f"a{i}", "n": 12345678901234567890} for i in range(5)]
    path = write(tmp_path, "d.json", json.dumps(rows))
    assert [e.prompt for e in read_examples(path)] == [r["instruction"] for r in rows]


def test_json_array_rows_know_their_element_and_line(tmp_path):
    path = write(tmp_path, "d.json", json.dumps([PAIR, PAIR, PAIR], indent=2))
    found = [(r.row, r.line) for r in iter_rows(path)]
    assert found == [(1, 2), (2, 6), (3, 10)]


def test_a_json_file_of_json_lines_is_read_as_jsonl(tmp_path):
    path = write(tmp_path, "d.json", jsonl(PAIR, PAIR))
    assert len(read_examples(path)) == 2


@pytest.mark.parametrize("content, row, expected", [
    (json.dumps([PAIR, PAIR])[:-30], 2, "was the file cut short"),
    (json.dumps([PAIR, PAIR])[:-1], 2, "the file ends before the array is closed"),
    ("[" + json.dumps(PAIR) + ", 5]", 2, "element 2 (line 1) is int, not an object"),
    ("[" + json.dumps(PAIR) + "] []", 1, "extra text after the closing ']'"),
    ("[" + json.dumps(PAIR) + " {}]", 1, "expected ',' or ']' after element 1"),
    ("[" + json.dumps(PAIR) + ",]", 2, "invalid JSON"),
    ('{"instruction": "q",\n "output": "a"}', 1, "one array of objects"),
])
def test_broken_json_arrays_name_the_element(tmp_path, content, row, expected):
    error = refused(write(tmp_path, "d.json", content))
    assert (error.file, error.row) == ("d.json", row) and expected in error.reason


# --- CSV ------------------------------------------------------------------------


@pytest.mark.parametrize("name, content, row, field, expected", [
    ("d.csv", "instruction,output\nq,a\nq,a,b\n", 2, "", "has 3 values but the header has 2 columns"),
    ("d.tsv", "instruction\toutput\nq\ta\tb\n", 1, "", "quote values that contain tabs"),
    ("d.csv", "instruction,output,output\nq,a,b\n", None, "output", "more than once"),
    ("d.csv", 'instruction,output\n"q,a\n', 1, "", "has 1 value"),  # an unclosed quote runs to the end
])
def test_ragged_and_broken_csv(tmp_path, name, content, row, field, expected):
    error = refused(write(tmp_path, name, content))
    assert (error.file, error.row, error.field) == (name, row, field) and expected in error.reason


# --- limits -------------------------------------------------------------------


@pytest.mark.parametrize("name, content, row", [
    ("d.jsonl", jsonl(PAIR) + json.dumps({"instruction": "x" * 500, "output": "a"}) + "\n", 2),
    ("d.txt", "short\n" + "y" * 500 + "\n", 2),
    ("d.json", json.dumps([PAIR, {"instruction": "x" * 500, "output": "a"}]), 2),
    ("d.csv", 'instruction,output\nq,a\n"' + "x\n" * 300 + '",a\n', 2),
])
def test_an_oversized_line_or_value_is_refused(tmp_path, monkeypatch, name, content, row):
    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 400)
    error = refused(write(tmp_path, name, content), task="pretrain" if name.endswith(".txt") else "sft")
    assert (error.file, error.row) == (name, row) and "longer than" in error.reason


@pytest.mark.parametrize("content", [b"\x00\x01\x02binary", bytes(range(256)) * 8, b"\x1f\x8b\x08\x00" + b"\x03" * 99])
@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv", "d.txt"])
def test_binary_junk_is_refused(tmp_path, name, content):
    error = refused(write(tmp_path, name, content), task="pretrain")
    assert error.file == name and error.reason


def test_unknown_extensions_are_sniffed_or_refused(tmp_path):
    assert summarize(write(tmp_path, "export", jsonl(PAIR))).format == "jsonl"
    assert summarize(write(tmp_path, "export.data", json.dumps([PAIR]))).format == "json"
    error = refused(write(tmp_path, "doc.pdf", b"%PDF-1.7 ..."))
    assert error.file == "doc.pdf" and "unsupported file type '.pdf'" in error.reason


# --- Parquet ------------------------------------------------------------------


def test_parquet_is_read_in_batches_and_bad_parquet_is_refused(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(parsers, "PARQUET_BATCH", 3)
    path = tmp_path / "d.parquet"
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    assert [(r.row, r.data) for r in iter_rows(path)] == list(enumerate(rows, start=1))
    summary = summarize(path, task="classify")
    assert (summary.format, summary.encoding, summary.labels) == ("parquet", "utf-8", ("0", "1"))
    error = refused(write(tmp_path, "cut.parquet", path.read_bytes()[:-20]), task="classify")
    assert error.file == "cut.parquet" and "not a readable Parquet file" in error.reason
    pq.write_table(pa.Table.from_pylist([{"text": "a", "label": 1.5}]), tmp_path / "f.parquet")
    error = refused(tmp_path / "f.parquet", task="classify")
    assert (error.row, error.field) == (1, "label") and "whole number" in error.reason


# --- zip ------------------------------------------------------------------------


def make_zip(path, members: dict, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return path


def test_zip_members_are_read_in_order_and_named_in_errors(tmp_path):
    path = make_zip(tmp_path / "d.zip", {"b.csv": "instruction,output\nq2,a2\n", "a.jsonl": jsonl(PAIR),
                                         "__MACOSX/._a.jsonl": b"\x00\x05junk", "notes/": ""})
    assert [e.prompt for e in read_examples(path)] == [PAIR["instruction"], "q2"]
    info = describe(path)
    assert info.format == "zip" and info.files == ("d.zip/a.jsonl", "d.zip/b.csv")
    bad = make_zip(tmp_path / "e.zip", {"a.jsonl": jsonl(PAIR), "b.jsonl": jsonl(PAIR) + "{oops\n"})
    error = refused(bad)
    assert (error.file, error.row) == ("e.zip/b.jsonl", 2) and "invalid JSON" in error.reason


@pytest.mark.parametrize("members, file, expected", [
    ({"inner.zip": b"PK\x03\x04"}, "d.zip/inner.zip", "archives inside an archive"),
    ({"a.jsonl": b"0" * (3 << 20)}, "d.zip/a.jsonl", "zip bomb"),
    ({"a.exe": b"MZ"}, "d.zip/a.exe", "unsupported file type"),
    ({"__MACOSX/x": b""}, "d.zip", "holds no data files"),
])
def test_dangerous_or_useless_archives_are_refused(tmp_path, members, file, expected):
    error = refused(make_zip(tmp_path / "d.zip", members))
    assert error.file == file and expected in error.reason


def test_a_damaged_zip_is_refused(tmp_path):
    good = make_zip(tmp_path / "g.zip", {"a.jsonl": jsonl(PAIR) * 50})
    error = refused(write(tmp_path, "d.zip", good.read_bytes()[:-40]))
    assert error.file == "d.zip" and "not a readable zip archive" in error.reason
    damaged = bytearray(good.read_bytes())
    damaged[60:70] = b"\xff" * 10  # inside the compressed data: the CRC or inflate fails while reading
    error = refused(write(tmp_path, "c.zip", bytes(damaged)))
    assert error.file.startswith("c.zip")


def test_too_many_members_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "MAX_MEMBERS", 2)
    error = refused(make_zip(tmp_path / "d.zip", {f"{i}.jsonl": jsonl(PAIR) for i in range(3)}))
    assert "over the limit of 2" in error.reason


# --- streaming ------------------------------------------------------------------


def test_count_lines():
    import tempfile

    with tempfile.NamedTemporaryFile() as handle:
        handle.write(b"a\nb\n\nc")
        handle.flush()
        assert count_lines(handle.name) == 4


@pytest.mark.parametrize("name", ["big.jsonl", "big.json", "big.csv"])
def test_a_large_file_is_summarized_in_flat_memory(tmp_path, name):
    rows = [{"instruction": f"question {i} " + "x" * 200, "output": f"answer {i}"} for i in range(40_000)]
    if name.endswith(".jsonl"):
        content = jsonl(*rows)
    elif name.endswith(".json"):
        content = json.dumps(rows)
    else:
        content = "instruction,output\n" + "".join(f"{r['instruction']},{r['output']}\n" for r in rows)
    path = write(tmp_path, name, content)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        summary = summarize(path, preview_rows=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.row_count == 40_000 and len(summary.preview) == 3
    # A ~9 MB file; the reader holds a row, its read buffers and the 1 MiB block being hashed.
    assert peak < min(size / 3, 3.5 * 2**20), (peak, size)


def test_scan_counts_every_row_and_keeps_the_first_few(tmp_path):
    seen = []
    first = write(tmp_path, "a.jsonl", jsonl(*[{"q": i} for i in range(25)]))
    second = write(tmp_path, "b.txt", "one\n\ntwo\n")
    result = formats.scan([first, second], preview_rows=2, progress=seen.append, every=10)
    assert (result.rows, result.preview, seen) == (27, ({"q": 0}, {"q": 1}), [10, 20])
    assert result.info.format == "mixed" and result.info.files == ("a.jsonl", "b.txt")
    with pytest.raises(DatasetError) as caught:
        formats.scan(write(tmp_path, "c.jsonl", jsonl({"q": 1}) + "[1]\n"))
    assert (caught.value.file, caught.value.row) == ("c.jsonl", 2)
    with pytest.raises(DatasetError, match="no data rows found"):
        formats.scan(write(tmp_path, "d.csv", "q,a\n"))
