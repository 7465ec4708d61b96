import json

import pytest

from tuning.data.readers import read_examples, summarize
from tuning.errors import DatasetError


def write(tmp_path, name, content: bytes | str):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_jsonl_with_alpaca_columns(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"instruction": "Add", "input": "2+2", "output": "4"}\n\n'
                                      '{"instruction": "Hi", "output": "Hello", "system": "Be brief."}\n')
    summary = summarize(path)
    assert summary.row_count == 2 and summary.format == "jsonl"
    assert summary.preview[0].prompt == "Add\n\n2+2" and summary.preview[0].response == "4"
    assert summary.preview[1].system == "Be brief."
    assert len(summary.sha256) == 64


def test_csv_with_prompt_response_aliases_and_bom(tmp_path):
    path = write(tmp_path, "b.csv", "\ufeffPrompt,Response\n\"Say, hi\",hi\nq2,a2\n".encode())
    examples = read_examples(path)
    assert [(e.prompt, e.response) for e in examples] == [("Say, hi", "hi"), ("q2", "a2")]


def test_bad_json_names_the_line(tmp_path):
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(16)] + ['{"instruction": "q"']
    path = write(tmp_path, "c.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as caught:
        read_examples(path)
    assert caught.value.row == 17 and "invalid JSON" in str(caught.value) and "c.jsonl, row 17" in str(caught.value)


@pytest.mark.parametrize("name, content, expected", [
    ("d.csv", "question_text,reply\nq,a\n", "missing the instruction"),
    ("d.csv", "instruction,notes\nq,a\n", "missing the output"),
    ("e.jsonl", "", "the file is empty"),
    ("e.jsonl", "   \n\n", "the file is empty"),
    ("f.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00IHDR", "binary file"),
    ("g.jsonl", b'{"instruction": "caf\xe9", "output": "x"}\n', "not valid UTF-8"),
    ("h.jsonl", '[1, 2]\n', "must be a JSON object"),
    ("i.jsonl", '{"instruction": "q", "output": ""}\n', "field 'output': is empty"),
    ("j.jsonl", '{"instruction": "q", "output": 5}\n', "must be text"),
    ("k.csv", "instruction,output\nq,a,extra\n", "has 3 values but the header has 2 columns"),
    ("l.txt", "hello", "unsupported file type"),
])
def test_bad_files_get_a_message_saying_what_and_where(tmp_path, name, content, expected):
    path = write(tmp_path, name, content)
    with pytest.raises(DatasetError) as caught:
        summarize(path)
    assert expected in str(caught.value)
    assert str(caught.value).startswith(name)
