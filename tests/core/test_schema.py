"""Schema detection, the unsure cases the UI asks about, and column mappings."""

import json

import pytest

from tuning.data import classify, preference, pretrain
from tuning.data.readers import read_examples
from tuning.data.schema import (SCHEMAS, apply_mapping, canonical_schema, check_mapping, detect, detect_schema,
                                schema_fields, schemas_for_task, tasks_for_schema)
from tuning.data.tasks import load_task_data, summarize
from tuning.errors import DatasetError

TURNS = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


@pytest.mark.parametrize("row, schema, confidence, mapping", [
    ({"instruction": "q", "input": "i", "output": "a"}, "alpaca", "sure",
     {"instruction": "instruction", "output": "output", "input": "input"}),
    ({"Instruction ": "q", "Output": "a", "system": "s"}, "alpaca", "sure",
     {"instruction": "Instruction ", "output": "Output", "system": "system"}),
    ({"messages": TURNS}, "chat", "sure", {"messages": "messages"}),
    ({"system": "s", "messages": TURNS}, "chat", "sure", {"messages": "messages", "system": "system"}),
    ({"conversations": [{"from": "human", "value": "q"}]}, "sharegpt", "sure", {"conversations": "conversations"}),
    ({"prompt": "q", "completion": "a"}, "prompt_completion", "sure", {"prompt": "prompt", "completion": "completion"}),
    ({"text": "t"}, "text", "sure", {"text": "text"}),
    ({"text": "t", "label": 1}, "text+label", "sure", {"text": "text", "label": "label"}),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, "preference", "sure",
     {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}),
    # Aliases: read the same way, but the UI asks the user to confirm.
    ({"question": "q", "answer": "a"}, "prompt_completion", "unsure", {"prompt": "question", "completion": "answer"}),
    ({"query": "q", "response": "a"}, "prompt_completion", "unsure", {"prompt": "query", "completion": "response"}),
    ({"content": "c", "category": "x"}, "text+label", "unsure", {"text": "content", "label": "category"}),
    ({"instruction": "q", "response": "a"}, "alpaca", "unsure", {"instruction": "instruction", "output": "response"}),
    # Recognised by its values only: a list of role/content turns under another name.
    ({"dialog": TURNS}, "chat", "unsure", {"messages": "dialog"}),
    # Named like chat, but holding text (a CSV cell): unsure.
    ({"messages": "[]"}, "chat", "unsure", {"messages": "messages"}),
])
def test_detection(row, schema, confidence, mapping):
    detection = detect_schema([row])
    assert (detection.schema, detection.confidence, detection.mapping) == (schema, confidence, mapping)
    assert detection.columns == tuple(row) and detection.candidates[0].schema == schema
    assert detection.tasks == SCHEMAS[schema].tasks


def test_two_schemas_that_fit_equally_well_are_unsure_and_both_offered():
    detection = detect_schema([{"instruction": "q", "output": "a", "prompt": "p", "completion": "c"}])
    assert detection.confidence == "unsure"
    assert {c.schema for c in detection.candidates} >= {"alpaca", "prompt_completion"}


def test_more_specific_schema_wins_and_the_rest_are_candidates():
    detection = detect_schema(columns=["text", "label"])
    assert (detection.schema, detection.confidence) == ("text+label", "sure")
    assert [c.schema for c in detection.candidates] == ["text+label", "text"]


def test_nothing_fits():
    detection = detect_schema([{"question_text": "q", "reply": "a"}])
    assert (detection.schema, detection.confidence, detection.candidates) == ("", "unsure", ())
    assert detection.columns == ("question_text", "reply") and detection.tasks == ()


def test_columns_are_the_union_of_the_first_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n" +
                    json.dumps({"instruction": "q", "output": "a", "system": "s"}) + "\n")
    detection = detect(path)
    assert detection.columns == ("instruction", "output", "system") and detection.mapping["system"] == "system"


def test_detect_a_text_file_and_a_file_with_a_bad_row_later(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    assert detect(tmp_path / "a.txt").schema == "text"
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "a", "label": "x"}) + "\n{broken\n")
    assert detect(path).schema == "text+label"  # from the rows before the bad one; reading reports the row
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(DatasetError, match="the file is empty"):
        detect(empty)


def test_schema_names_tasks_and_fields():
    assert canonical_schema("messages") == "chat" and canonical_schema("Conversations") == "sharegpt"
    with pytest.raises(DatasetError, match="unknown schema 'dpo'"):
        canonical_schema("dpo")
    assert tasks_for_schema("alpaca") == ("sft", "grpo") and tasks_for_schema("text") == ("pretrain",)
    assert tasks_for_schema("text+label") == ("classify", "pretrain")
    assert tasks_for_schema("preference") == ("preference", "reward")
    assert tasks_for_schema("kto") == ("preference",) and schemas_for_task("reward") == ("preference",)
    assert set(schemas_for_task("sft")) == {"alpaca", "prompt_completion", "chat", "sharegpt"}
    assert "text" not in schemas_for_task("sft")
    assert schema_fields("preference")[:3] == [
        {"name": "chosen", "required": True, "help": "the preferred reply"},
        {"name": "rejected", "required": True, "help": "the reply to avoid"},
        {"name": "prompt", "required": False,
         "help": "what the model is asked (leave it out where chosen and rejected are whole conversations)"}]
    assert schema_fields("alpaca")[-1]["required"] is False


def test_apply_and_check_mapping():
    record = {"q": "question", "a": "answer", "prompt": "ignored", "id": 7}
    assert apply_mapping(record, {"prompt": "q", "completion": "a"}) == {"id": 7, "prompt": "question",
                                                                         "completion": "answer"}
    assert check_mapping({"prompt": "q"}, ["q", "a"], schema="prompt_completion") == {"prompt": "q"}
    with pytest.raises(DatasetError) as caught:
        check_mapping({"prompt": "nope"}, ["q", "a"], schema="prompt_completion", file="d.csv")
    assert (caught.value.file, caught.value.row, caught.value.field) == ("d.csv", 1, "prompt")
    assert "choose one of: q, a" in caught.value.reason
    with pytest.raises(DatasetError, match="'label' is not a field of prompt_completion"):
        check_mapping({"label": "q"}, ["q"], schema="prompt_completion")


# --- reading with a mapping or a forced schema ----------------------------------


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    return path


def test_sft_with_a_mapping(tmp_path):
    path = write(tmp_path, "d.csv", "Frage,Antwort,Kontext\nWie?,So.,Hier\n")
    examples = read_examples(path, mapping={"prompt": "Frage", "completion": "Antwort", "input": "Kontext"})
    assert (examples[0].prompt, examples[0].response) == ("Wie?\n\nHier", "So.")
    summary = summarize(path, task="sft", mapping={"prompt": "Frage", "completion": "Antwort"})
    assert summary.schema == "prompt_completion" and summary.detection.schema == ""
    with pytest.raises(DatasetError) as caught:
        read_examples(path, mapping={"prompt": "Frage", "completion": "Answer"})
    assert (caught.value.file, caught.value.field) == ("d.csv", "completion")
    assert "Frage, Antwort, Kontext" in caught.value.reason


def test_chat_under_another_column_name(tmp_path):
    path = write(tmp_path, "d.jsonl", json.dumps({"dialog": TURNS, "sys": "Be kind."}) + "\n")
    examples = read_examples(path, mapping={"messages": "dialog", "system": "sys"})
    assert [(m.role, m.content) for m in examples[0].messages] == [("system", "Be kind."), ("user", "q"),
                                                                   ("assistant", "a")]
    assert summarize(path, task="sft", schema="messages", mapping={"messages": "dialog"}).schema == "chat"


def test_other_tasks_with_a_mapping(tmp_path):
    path = write(tmp_path, "d.csv", "body,kind,ok,ko\nhello,greet,yes,no\nbye,leave,fine,bad\n")
    assert [d.text for d in pretrain.read_documents(path, mapping={"text": "body"})] == ["hello", "bye"]
    rows = classify.read_labelled(path, mapping={"text": "body", "label": "kind"})
    assert [(r.text, r.label) for r in rows] == [("hello", "greet"), ("bye", "leave")]
    pairs = preference.read_pairs(path, mapping={"prompt": "body", "chosen": "ok", "rejected": "ko"})
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("hello", "yes", "no"), ("bye", "fine", "bad")]
    summary = summarize(path, task="classify", mapping={"text": "body", "label": "kind"})
    assert summary.labels == ("greet", "leave") and summary.schema == "text+label"


def test_a_schema_that_does_not_suit_the_task_is_refused(tmp_path):
    path = write(tmp_path, "d.jsonl", json.dumps({"text": "a", "label": "x"}) + "\n")
    with pytest.raises(DatasetError) as caught:
        summarize(path, task="sft", schema="text+label")
    assert caught.value.field == "schema" and "cannot be used for sft" in caught.value.reason
    with pytest.raises(DatasetError, match="cannot be used for instruction or chat"):
        read_examples(path, schema="text")


def test_preference_pairs_are_read_and_tokenized_for_training(tmp_path, tiny_model):
    path = write(tmp_path, "p.jsonl", json.dumps({"prompt": "q", "chosen": "good", "rejected": "bad"}) + "\n" +
                 json.dumps({"prompt": "q2", "chosen": [{"role": "user", "content": "q2"},
                                                        {"role": "assistant", "content": "fine"}],
                             "rejected": "worse", "system": "s"}) + "\n")
    summary = summarize(path, task="preference")
    assert summary.schema == "preference" and summary.row_count == 2
    assert summary.preview[1] == preference.PreferencePair("q2", "fine", "worse", "s", 2)
    with pytest.raises(DatasetError) as caught:
        summarize(path, task="sft")
    assert "missing the output" in caught.value.reason
    from tuning.models import load_tokenizer

    data = load_task_data("preference", path, tokenizer=load_tokenizer(str(tiny_model)), max_length=256)
    assert [item.row for item in data.items] == [1, 2] and data.rows_read == 2
    for item in data.items:  # the same prompt tokens, then each reply with labels on it alone
        shared = next(i for i, (a, b) in enumerate(zip(item.chosen.input_ids, item.rejected.input_ids)) if a != b)
        assert set(item.chosen.labels[:shared]) == set(item.rejected.labels[:shared]) == {-100}
        assert item.chosen.labels[shared] == item.chosen.input_ids[shared]
    bad = write(tmp_path, "b.jsonl", json.dumps({"prompt": "q", "chosen": [{"role": "user", "content": "q"}],
                                                 "rejected": "x"}) + "\n")
    with pytest.raises(DatasetError) as caught:
        preference.read_pairs(bad)
    assert (caught.value.row, caught.value.field) == (1, "chosen") and "no assistant turn" in caught.value.reason


def test_preference_conversations_without_a_prompt_column_carry_the_prompt(tmp_path):
    def conversation(reply):
        return [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "How are you?"},
                {"role": "assistant", "content": reply}]

    path = write(tmp_path, "c.jsonl", json.dumps({"chosen": conversation("Well, thanks!"),
                                                  "rejected": conversation("Go away.")}) + "\n")
    (pair,) = preference.read_pairs(path)
    assert (pair.prompt, pair.chosen, pair.rejected, pair.system) == ("How are you?", "Well, thanks!", "Go away.",
                                                                      "Be kind.")
    assert [m.role for m in pair.context] == ["system", "user", "assistant", "user"]
    other_prompt = conversation("No.")
    other_prompt[3] = {"role": "user", "content": "Who are you?"}
    differ = write(tmp_path, "d.jsonl", json.dumps({"chosen": conversation("Fine."), "rejected": other_prompt}) + "\n")
    with pytest.raises(DatasetError) as caught:
        preference.read_pairs(differ)
    assert caught.value.field == "rejected" and "share the prompt" in caught.value.reason
    text_only = write(tmp_path, "t.jsonl", json.dumps({"chosen": "Fine.", "rejected": "No."}) + "\n")
    with pytest.raises(DatasetError) as caught:
        preference.read_pairs(text_only, schema="preference")
    assert caught.value.field == "prompt" and "conversations" in caught.value.reason
