import json
from dataclasses import asdict

import pytest

from tuning.data import pretrain
from tuning.data.classify import build_label2id
from tuning.data.splits import split_validation
from tuning.data.tasks import collate_for_task, load_task_data, summarize
from tuning.errors import ConfigError, DatasetError
from tuning.metrics import accuracy, macro_f1
from tuning.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


def write(tmp_path, name, content: str):
    path = tmp_path / name
    path.write_text(content)
    return path


def jsonl(*rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# --- sft ----------------------------------------------------------------------


def test_sft_task_data_counts_dropped_and_truncated_rows(tmp_path, tokenizer):
    path = write(tmp_path, "d.jsonl", jsonl({"prompt": "Hi", "completion": "Hello"},
                                            {"prompt": "word " * 100, "completion": "too late"},
                                            {"prompt": "Tell me", "completion": "more " * 100}))
    data = load_task_data("sft", path, tokenizer=tokenizer, max_length=64, loss_on_prompt=False)
    assert (data.rows_read, data.rows_dropped, data.dropped_rows, data.truncated) == (3, 1, (2,), 1)
    assert data.label2id is None and [item.row for item in data.items] == [1, 3]
    batch = collate_for_task("sft", pad_token_id=tokenizer.pad_token_id)(data.items)
    assert batch["labels"].shape == batch["input_ids"].shape == (2, 64)


def test_sft_refuses_when_no_row_has_a_response_within_max_length(tmp_path, tokenizer):
    path = write(tmp_path, "d.jsonl", jsonl({"prompt": "word " * 100, "completion": "late"}))
    with pytest.raises(DatasetError, match="raise max length"):
        load_task_data("sft", path, tokenizer=tokenizer, max_length=32)


# --- pretrain -----------------------------------------------------------------


PARAGRAPHS = "First document,\nstill the first.\n\n\n  \nSecond document.\n\nThird one here.\n"


def test_txt_paragraphs_or_whole_file_become_documents(tmp_path):
    path = write(tmp_path, "book.txt", PARAGRAPHS)
    documents = pretrain.read_documents(path)
    assert [(d.text, d.row) for d in documents] == [("First document,\nstill the first.", 1),
                                                    ("Second document.", 6), ("Third one here.", 8)]
    whole = pretrain.read_documents(path, split="file")
    assert [d.text for d in whole] == [PARAGRAPHS.strip()]


def test_pretrain_blocks_end_each_document_with_eos_and_keep_a_long_enough_tail(tmp_path, tokenizer):
    path = write(tmp_path, "book.txt", PARAGRAPHS)
    documents = pretrain.read_documents(path)
    stream = []
    for document in documents:
        stream += tokenizer(document.text)["input_ids"] + [tokenizer.eos_token_id]
    data = load_task_data("pretrain", path, tokenizer=tokenizer, max_length=8)
    assert data.rows_read == 3 and data.label2id is None
    assert all(len(block.input_ids) == 8 for block in data.items)
    assert all(block.labels == block.input_ids for block in data.items)
    # Every full block, in order; the short tail (under 16 tokens and under a block) is dropped.
    assert [t for block in data.items for t in block.input_ids] == stream[:len(stream) // 8 * 8]
    one_block = load_task_data("pretrain", path, tokenizer=tokenizer, max_length=512)
    assert one_block.items[0].input_ids == stream  # a partial block of >= 16 tokens is kept
    assert stream.count(tokenizer.eos_token_id) == 3


def test_pretrain_reads_a_text_column_and_refuses_too_little_text(tmp_path, tokenizer):
    path = write(tmp_path, "docs.csv", "id,Text\n1,hello world\n2,another one\n")
    assert [d.text for d in pretrain.read_documents(path)] == ["hello world", "another one"]
    with pytest.raises(DatasetError, match="only 6 tokens long"):
        load_task_data("pretrain", path, tokenizer=tokenizer, max_length=64)


@pytest.mark.parametrize("name, content, row, field, expected", [
    ("a.jsonl", jsonl({"body": "x"}), 1, "text", "missing the text (or content) column"),
    ("a.jsonl", jsonl({"text": "x"}, {"text": ""}), 2, "text", "is empty"),
    ("a.jsonl", jsonl({"text": "x"}, {"text": ["x"]}), 2, "text", "must be text"),
    ("a.txt", "\n \n", None, "", "the file is empty"),
    ("a.pdf", "x", None, "", "unsupported file type"),
])
def test_bad_pretraining_files_say_what_and_where(tmp_path, name, content, row, field, expected):
    path = write(tmp_path, name, content)
    with pytest.raises(DatasetError) as caught:
        summarize(path, task="pretrain")
    assert (caught.value.file, caught.value.row, caught.value.field) == (name, row, field)
    assert expected in caught.value.reason


# --- classify -----------------------------------------------------------------


def test_label2id_is_sorted_numerically_for_numbers_and_independent_of_order():
    assert build_label2id(["10", "2", "1", "2"]) == {"1": 0, "2": 1, "10": 2}
    assert build_label2id(["pos", "neg", "neutral"]) == build_label2id(["neutral", "pos", "neg"]) == {
        "neg": 0, "neutral": 1, "pos": 2}


def test_classification_labels_from_strings_ints_and_csv(tmp_path, tokenizer):
    path = write(tmp_path, "c.jsonl", jsonl({"text": "great film", "label": 1}, {"text": "awful", "label": 0},
                                            {"sentence": "ok", "label": 1.0}, {"text": "long " * 50, "label": "1"}))
    with pytest.raises(DatasetError, match="row 3, field .text.: is missing"):  # the first row named the column
        load_task_data("classify", path, tokenizer=tokenizer, max_length=16)
    path = write(tmp_path, "c.jsonl", jsonl({"text": "great film", "label": 1}, {"text": "awful", "label": 0},
                                            {"text": "ok", "label": 1.0}, {"text": "long " * 50, "label": "1"}))
    data = load_task_data("classify", path, tokenizer=tokenizer, max_length=16)
    assert data.label2id == {"0": 0, "1": 1}
    assert [item.label for item in data.items] == [1, 0, 1, 1]
    assert data.items[0].input_ids == tokenizer("great film")["input_ids"]  # no chat template
    assert data.truncated == 1 and len(data.items[3].input_ids) == 16
    batch = collate_for_task("classify", pad_token_id=tokenizer.pad_token_id)(data.items)
    assert batch["labels"].tolist() == [1, 0, 1, 1] and batch["input_ids"].shape == (4, 16)
    assert batch["attention_mask"][1].sum() == len(data.items[1].input_ids)

    csv_path = write(tmp_path, "c.csv", "Sentence,Category\nhi,greeting\nbye,farewell\nhey,greeting\n")
    data = load_task_data("classify", csv_path, tokenizer=tokenizer, max_length=16)
    assert data.label2id == {"farewell": 0, "greeting": 1} and [i.label for i in data.items] == [1, 0, 1]


@pytest.mark.parametrize("content, row, field, expected", [
    (jsonl({"text": "a"}), 1, "label", "missing the label (or class, category) column"),
    (jsonl({"text": "a", "label": 1}, {"text": "b", "label": None}), 2, "label", "is missing"),
    (jsonl({"text": "a", "label": 1}, {"text": "b", "label": 0.5}), 2, "label", "must be text or a whole number"),
    (jsonl({"text": "a", "label": 1}, {"text": "b", "label": [1]}), 2, "label", "must be text or a whole number"),
    (jsonl({"text": "a", "label": 1}, {"text": " ", "label": 1}), 2, "text", "is empty"),
    (jsonl({"text": "a", "label": "x"}, {"text": "b", "label": "x"}), None, "label", "at least two different"),
])
def test_bad_classification_files_say_what_and_where(tmp_path, content, row, field, expected):
    path = write(tmp_path, "c.jsonl", content)
    with pytest.raises(DatasetError) as caught:
        summarize(path, task="classify")
    assert (caught.value.file, caught.value.row, caught.value.field) == ("c.jsonl", row, field)
    assert expected in caught.value.reason


# --- summaries for the web side -------------------------------------------------


def test_summaries_per_task_serialise_for_the_web_side(tmp_path):
    sft = summarize(write(tmp_path, "s.jsonl", jsonl({"instruction": "q", "output": "a"})), task="sft")
    assert asdict(sft.preview[0])["prompt"] == "q" and sft.schema == "alpaca"
    text = summarize(write(tmp_path, "t.txt", PARAGRAPHS), task="pretrain")
    assert (text.row_count, text.columns, text.schema, text.format) == (3, (), "text", "text")
    assert asdict(text.preview[1]) == {"text": "Second document.", "row": 6}
    labelled = summarize(write(tmp_path, "c.csv", "text,label\na,pos\nb,neg\n"), task="classify")
    assert (labelled.row_count, labelled.columns, labelled.labels) == (2, ("text", "label"), ("neg", "pos"))
    assert asdict(labelled.preview[0]) == {"text": "a", "label": "pos", "row": 1}
    with pytest.raises(ConfigError):
        summarize(tmp_path / "t.txt", task="translate")


def test_summarize_does_not_import_torch_or_transformers(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, "c.csv", "text,label\na,pos\nb,neg\n")
    code = ("import sys; from tuning.data.tasks import summarize; "
            f"summarize({str(path)!r}, task='classify'); summarize({str(path)!r}, task='pretrain'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"


# --- splits and metrics ---------------------------------------------------------


def test_split_validation_is_deterministic_and_leaves_both_parts_non_empty():
    items = list(range(10))
    train, validation = split_validation(items, 0.2, seed=1)
    assert (train, validation) == split_validation(items, 0.2, seed=1)
    assert len(validation) == 2 and sorted(train + validation) == items and train == sorted(train)
    assert split_validation(items, 0.2, seed=2) != (train, validation)
    assert split_validation(items, 0.0, seed=1) == (items, [])
    assert [len(part) for part in split_validation([1, 2], 0.01, seed=0)] == [1, 1]  # at least one held out
    assert [len(part) for part in split_validation([1, 2], 0.9, seed=0)] == [1, 1]  # at least one trained on
    for bad_items, ratio in (([1], 0.1), (items, 1.0), (items, -0.1)):
        with pytest.raises(ConfigError) as caught:
            split_validation(bad_items, ratio, seed=0)
        assert "validation_ratio" in caught.value.errors


def test_accuracy_and_macro_f1():
    predicted, expected = [0, 1, 1, 2, 2, 2], [0, 1, 2, 2, 2, 1]
    assert accuracy(predicted, expected) == pytest.approx(4 / 6)
    # Per label F1: 0 -> 1.0; 1 -> 2*1/(2+2) = 0.5; 2 -> 2*2/(3+3) = 2/3.
    assert macro_f1(predicted, expected) == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    assert macro_f1([0, 0], [0, 0], labels=[0, 1]) == pytest.approx(0.5)  # a label never seen scores 0
    assert accuracy([], []) == 0.0 == macro_f1([], [])
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])


def test_csv_values_longer_than_the_csv_default_limit_are_read(tmp_path):
    path = write(tmp_path, "long.csv", "text\n" + "word " * 40_000 + "\n")  # 200 kB in one value
    assert len(pretrain.read_documents(path)[0].text) == 200_000


# --- formats, schemas and mappings through the trainer's entry point -------------


def test_load_task_data_reads_parquet_zip_and_several_files_with_a_mapping(tmp_path, tokenizer):
    import zipfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "reviews.parquet"
    pq.write_table(pa.Table.from_pylist([{"body": "great", "kind": "pos"}, {"body": "bad", "kind": "neg"}]), path)
    data = load_task_data("classify", path, tokenizer=tokenizer, max_length=16,
                          mapping={"text": "body", "label": "kind"})
    assert data.label2id == {"neg": 0, "pos": 1} and [item.label for item in data.items] == [1, 0]

    archive = tmp_path / "chat.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("a.jsonl", jsonl({"question": "Hi", "answer": "Hello"}))
        out.writestr("b.json", json.dumps([{"question": "Bye", "answer": "See you"}]))
    data = load_task_data("sft", archive, tokenizer=tokenizer, max_length=64, schema="prompt_completion")
    assert data.rows_read == 2 and [item.row for item in data.items] == [1, 1]

    first = write(tmp_path, "a.txt", "The first document, long enough to fill a block of tokens.\n")
    second = write(tmp_path, "b.txt", "Another document, from a second file of the same dataset.\n")
    data = load_task_data("pretrain", [first, second], tokenizer=tokenizer, max_length=512)
    assert data.rows_read == 2
    with pytest.raises(DatasetError) as caught:
        load_task_data("pretrain", path, tokenizer=tokenizer, max_length=8, schema="chat")
    assert caught.value.field == "schema" and "cannot be used for pretrain" in caught.value.reason
