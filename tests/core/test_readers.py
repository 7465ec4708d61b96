import json
from dataclasses import asdict

import pytest

from tuning.data import sources
from tuning.data.readers import Example, Message, read_examples, summarize
from tuning.errors import DatasetError


def write(tmp_path, name, content: bytes | str):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def jsonl(*rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def turns(example: Example) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in example.messages]


def test_jsonl_with_alpaca_columns(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"instruction": "Add", "input": "2+2", "output": "4"}\n\n'
                                      '{"instruction": "Hi", "output": "Hello", "system": "Be brief."}\n')
    summary = summarize(path)
    assert summary.row_count == 2 and summary.format == "jsonl" and summary.schema == "alpaca"
    assert summary.preview[0].prompt == "Add\n\n2+2" and summary.preview[0].response == "4"
    assert summary.preview[1].system == "Be brief."
    assert len(summary.sha256) == 64
    assert turns(read_examples(path)[1]) == [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]


def test_preview_rows_serialise_with_flat_fields_and_every_turn(tmp_path):
    path = write(tmp_path, "p.jsonl", jsonl({"messages": [{"role": "user", "content": "a"},
                                                          {"role": "assistant", "content": "b"},
                                                          {"role": "user", "content": "c"},
                                                          {"role": "assistant", "content": "d"}]}))
    row = json.loads(json.dumps(asdict(summarize(path).preview[0])))  # as the web side stores it
    assert (row["system"], row["prompt"], row["response"]) == ("", "a", "b")
    assert [m["content"] for m in row["messages"]] == ["a", "b", "c", "d"]


def test_csv_with_prompt_response_aliases_and_bom(tmp_path):
    path = write(tmp_path, "b.csv", "\ufeffPrompt,Response\n\"Say, hi\",hi\nq2,a2\n".encode())
    examples = read_examples(path)
    assert [(e.prompt, e.response) for e in examples] == [("Say, hi", "hi"), ("q2", "a2")]


@pytest.mark.parametrize("columns", [("prompt", "completion"), ("question", "answer"), ("instruction", "output")])
def test_flat_aliases_in_jsonl_and_tsv(tmp_path, columns):
    a, b = columns
    tsv = write(tmp_path, "t.tsv", f"{a}\t{b}\nmulti\tline one\n")
    assert turns(read_examples(tsv)[0]) == [("user", "multi"), ("assistant", "line one")]
    path = write(tmp_path, "t.jsonl", jsonl({a: "q", b: "r"}))
    assert turns(read_examples(path)[0]) == [("user", "q"), ("assistant", "r")]


def test_openai_chat_multi_turn_with_system_and_weight(tmp_path):
    path = write(tmp_path, "chat.jsonl", jsonl({"messages": [
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "weight": 0}, {"role": "user", "content": "More"},
        {"role": "assistant", "content": "Sure"}]}))
    example = read_examples(path)[0]
    assert turns(example) == [("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello"), ("user", "More"),
                              ("assistant", "Sure")]
    assert [m.train for m in example.messages if m.role == "assistant"] == [False, True]
    assert example.row == 1 and summarize(path).schema == "chat"


def test_sharegpt_with_both_role_spellings_and_a_top_level_system(tmp_path):
    path = write(tmp_path, "s.jsonl", jsonl(
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"system": "Short answers.", "conversations": [{"from": "user", "value": "Q"},
                                                       {"from": "assistant", "value": "A"}]},
        {"conversations": [{"from": "system", "value": ""}, {"from": "human", "value": "x"},
                           {"from": "gpt", "value": "y"}]}))
    examples = read_examples(path)
    assert turns(examples[0]) == [("user", "Hi"), ("assistant", "Hello")]
    assert turns(examples[1]) == [("system", "Short answers."), ("user", "Q"), ("assistant", "A")]
    assert turns(examples[2]) == [("user", "x"), ("assistant", "y")]  # an empty system message is no message
    assert summarize(path).schema == "sharegpt"


def test_from_pair_keeps_the_flat_view():
    example = Example.from_pair("q", "a", system="s", row=3)
    assert example.messages[0] == Message("system", "s")
    assert (example.system, example.prompt, example.response, example.row) == ("s", "q", "a", 3)


def test_bad_json_names_the_line(tmp_path):
    lines = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(16)] + ['{"instruction": "q"']
    path = write(tmp_path, "c.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as caught:
        read_examples(path)
    assert caught.value.row == 17 and "invalid JSON" in str(caught.value) and "c.jsonl, row 17" in str(caught.value)


@pytest.mark.parametrize("name, content, expected", [
    ("d.csv", "question_text,reply\nq,a\n", "missing the instruction"),
    ("d.csv", "instruction,notes\nq,a\n", "missing the output"),
    ("d.csv", "messages\n\"[]\"\n", "must be uploaded as JSONL"),
    ("e.jsonl", "", "the file is empty"),
    ("e.jsonl", "   \n\n", "the file is empty"),
    ("e.csv", "instruction,output\n", "no data rows found"),
    ("f.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00IHDR", "binary file"),
    ("h.jsonl", '[1, 2]\n', "must be a JSON object"),
    ("h.jsonl", "[" * 100_000 + "\n", "JSON that cannot be read (maximum recursion depth"),
    ("h.jsonl", '{"instruction": ' + "9" * 5000 + "}\n", "JSON that cannot be read (Exceeds the limit"),
    ("i.jsonl", '{"instruction": "q", "output": ""}\n', "field 'output': is empty"),
    ("j.jsonl", '{"instruction": "q", "output": 5}\n', "must be text"),
    ("k.csv", "instruction,output\nq,a,extra\n", "row 1: has 3 values but the header has 2 columns"),
    ("k.csv", "instruction,output\nq,a\nq\n", "row 2: has 1 value but"),
    ("l.txt", "hello", "only for continued pre-training"),
    ("m.pdf", "hello", "unsupported file type"),
])
def test_bad_files_get_a_message_saying_what_and_where(tmp_path, name, content, expected):
    path = write(tmp_path, name, content)
    with pytest.raises(DatasetError) as caught:
        summarize(path)
    assert expected in str(caught.value)
    assert str(caught.value).startswith(name)


def test_latin1_files_are_read_as_latin1(tmp_path):
    # No valid UTF-8 at the start: the file is Latin-1 (the encoding is reported in the summary).
    path = write(tmp_path, "g.jsonl", b'{"instruction": "caf\xe9", "output": "na\xefve"}\n')
    assert turns(read_examples(path)[0]) == [("user", "café"), ("assistant", "naïve")]
    assert summarize(path).encoding == "latin-1"


@pytest.mark.parametrize("name, content, expected", [
    ("g.jsonl", b'{"instruction": "q", "output": "x"}\n{"instruction": "caf\xe9", "output": "x"}\n',
     "row 2: not valid UTF-8 text (line 2, byte 21)"),
    ("g.csv", b'instruction,output\nq,a\ncaf\xe9,x\n', "row 2: not valid UTF-8 text (line 3"),
])
def test_a_bad_byte_after_a_utf8_start_names_the_line(tmp_path, monkeypatch, name, content, expected):
    monkeypatch.setattr(sources, "SNIFF_BYTES", 20)  # the encoding is decided on the first 20 bytes
    with pytest.raises(DatasetError) as caught:
        summarize(write(tmp_path, name, content))
    assert expected in str(caught.value) and str(caught.value).startswith(name)


def chat(*messages, key="messages"):
    return {key: [dict(zip(("role", "content"), m)) if isinstance(m, tuple) else m for m in messages]}


GOOD = chat(("user", "q"), ("assistant", "a"))


@pytest.mark.parametrize("row, field, expected", [
    ({"messages": []}, "messages", "must be a non-empty list"),
    ({"messages": "hi"}, "messages", "must be a non-empty list"),
    ({"conversations": [{"from": "human", "value": "q"}]}, "conversations", "has no assistant turn"),
    ({"instruction": "q", "output": "a"}, "messages", "is missing; every row must use the same format"),
    (chat(("system", "s")), "messages", "has no user or assistant turn"),
    (chat(("user", "q"), ("assistant", "a"), ("user", "q2")), "messages[2].role", "ends on a user turn"),
    (chat(("assistant", "a"), ("user", "q"), ("assistant", "b")), "messages[0].role", "must start with a user"),
    (chat(("user", "q"), ("system", "s"), ("assistant", "a")), "messages[1].role", "can only come first"),
    (chat(("user", "q"), ("tool", "x"), ("assistant", "a")), "messages[1].role", "'tool' is not a role"),
    (chat(("user", "q"), {"content": "a"}), "messages[1].role", "is missing; say who speaks"),
    (chat(("user", "q"), ("assistant", 7)), "messages[1].content", "must be text"),
    (chat(("user", "q"), ("assistant", " ")), "messages[1].content", "is empty"),
    (chat(("user", "q"), {"role": "assistant"}), "messages[1].content", "is missing"),
    (chat(("user", "q"), "just text"), "messages[1]", "each turn must be an object"),
    (chat(("user", "q"), {"role": "assistant", "content": "a", "weight": 2}), "messages[1].weight", "must be 0"),
    (chat({"from": "human", "value": "q"}, {"from": "bot", "value": "a"}, key="conversations"),
     "conversations[1].from", "'bot' is not a role"),
    (chat({"from": "human", "value": "q"}, {"from": "gpt"}, key="conversations"), "conversations[1].value",
     "is missing"),
])
def test_bad_conversations_name_the_row_and_field(tmp_path, row, field, expected):
    first = GOOD if "messages" in row or "instruction" in row else chat(("user", "q"), ("assistant", "a"),
                                                                          key="conversations")
    path = write(tmp_path, "conv.jsonl", jsonl(first, row))
    with pytest.raises(DatasetError) as caught:
        read_examples(path)
    assert (caught.value.file, caught.value.row, caught.value.field) == ("conv.jsonl", 2, field)
    assert expected in caught.value.reason
