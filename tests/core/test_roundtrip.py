"""Every schema written in every format that can hold it reads back as the
same records, and the summary names the format and the detected schema."""

import csv
import io
import json
import zipfile

import pytest

from tuning.data import classify, preference, pretrain, readers
from tuning.data.tasks import summarize

# Values with the characters each format must escape: commas, quotes, tabs,
# line breaks, non-ASCII.
TRICKY = ['plain', 'with, comma', 'say "hi"', 'tab\there', 'two\nlines', 'café ☕ 日本']


def turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


ROWS = {
    "alpaca": [{"instruction": f"Do {t}", "input": t if i % 2 else "", "output": f"Done {t}", "system": ""}
               for i, t in enumerate(TRICKY)],
    "prompt_completion": [{"prompt": f"Q {t}", "completion": f"A {t}"} for t in TRICKY],
    "chat": [{"messages": turns(("system", "Be brief."), ("user", t), ("assistant", t[::-1]))} for t in TRICKY],
    "sharegpt": [{"conversations": [{"from": "human", "value": t}, {"from": "gpt", "value": t.upper()}]}
                 for t in TRICKY],
    "text": [{"text": f"Document about {t}."} for t in TRICKY],
    "text+label": [{"text": t, "label": ("pos", "neg")[i % 2]} for i, t in enumerate(TRICKY)],
    "preference": [{"prompt": f"Q {t}", "chosen": f"good {t}", "rejected": f"bad {t}"} for t in TRICKY],
}
TASK = {"alpaca": "sft", "prompt_completion": "sft", "chat": "sft", "sharegpt": "sft", "text": "pretrain",
        "text+label": "classify", "preference": "preference"}
FLAT = ("csv", "tsv")  # formats whose cells are text only: no lists of turns


def expected(schema, rows):
    """What reading ``rows`` must give, built without the readers."""
    if schema == "alpaca":
        return [[("user", r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")),
                 ("assistant", r["output"])] for r in rows]
    if schema == "prompt_completion":
        return [[("user", r["prompt"]), ("assistant", r["completion"])] for r in rows]
    if schema == "chat":
        return [[(m["role"], m["content"]) for m in r["messages"]] for r in rows]
    if schema == "sharegpt":
        return [[("user", r["conversations"][0]["value"]), ("assistant", r["conversations"][1]["value"])]
                for r in rows]
    if schema == "text":
        return [r["text"] for r in rows]
    if schema == "text+label":
        return [(r["text"], r["label"]) for r in rows]
    return [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]


def read_back(schema, path):
    if TASK[schema] == "sft":
        return [[(m.role, m.content) for m in e.messages] for e in readers.read_examples(path)]
    if schema == "text":
        return [d.text for d in pretrain.read_documents(path, split="file")]
    if schema == "text+label":
        return [(r.text, r.label) for r in classify.read_labelled(path)]
    return [(p.prompt, p.chosen, p.rejected) for p in preference.read_pairs(path)]


def encode(fmt, rows) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if fmt == "json":
        return json.dumps(rows, indent=1, ensure_ascii=False).encode()
    if fmt in FLAT:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), dialect="excel-tab" if fmt == "tsv" else "excel")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode()
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        out = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), out, row_group_size=2)  # several row groups
        return out.getvalue()
    raise AssertionError(fmt)


def write(tmp_path, fmt, rows):
    if fmt == "zip":  # half as JSONL, half as Parquet: members are read in name order
        path = tmp_path / "data.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("part-1.jsonl", encode("jsonl", rows[:3]))
            archive.writestr("part-2.parquet", encode("parquet", rows[3:]))
        return path
    path = tmp_path / f"data.{fmt}"
    path.write_bytes(encode(fmt, rows))
    return path


CASES = [(fmt, schema) for fmt in ("jsonl", "json", "csv", "tsv", "parquet", "zip") for schema in ROWS
         if not (fmt in FLAT and schema in ("chat", "sharegpt"))]


@pytest.mark.parametrize("fmt, schema", CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_every_format_and_schema_reads_back_the_same_records(tmp_path, fmt, schema):
    rows = ROWS[schema]
    path = write(tmp_path, fmt, rows)
    assert read_back(schema, path) == expected(schema, rows)
    summary = summarize(path, task=TASK[schema], preview_rows=2)
    assert summary.row_count == len(rows) and len(summary.preview) == 2
    assert summary.format == fmt and summary.schema == schema
    assert summary.detection.schema == schema and summary.detection.confidence == "sure"
    assert TASK[schema] in summary.detection.tasks
    assert set(summary.columns) == set(rows[0])


def test_plain_text_reads_back_as_documents(tmp_path):
    path = tmp_path / "book.md"
    path.write_text("\n\n".join(f"# {t}" for t in ROWS["text"][0]["text"].split()) + "\n")
    documents = pretrain.read_documents(path)
    assert [d.text for d in documents] == [f"# {w}" for w in ROWS["text"][0]["text"].split()]
    summary = summarize(path, task="pretrain")
    assert (summary.format, summary.schema, summary.encoding, summary.columns) == ("text", "text", "utf-8", ())


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_a_list_of_files_reads_as_one_dataset(tmp_path, fmt):
    rows = ROWS["prompt_completion"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = write(tmp_path / "a", fmt, rows[:2]), write(tmp_path / "b", fmt, rows[2:])
    examples = readers.read_examples([first, second])
    assert [[(m.role, m.content) for m in e.messages] for e in examples] == expected("prompt_completion", rows)
    assert [e.row for e in examples] == [1, 2, 1, 2, 3, 4]  # the row within its own file
    summary = summarize([first, second], task="sft")
    assert summary.row_count == len(rows) and summary.files == (first.name, second.name)
