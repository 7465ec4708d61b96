import json

import pytest

from tuning.data.lint import BLOCKING, WARNING, drop_rows, lint, lint_file
from tuning.data.readers import Example
from tuning.errors import DatasetError
from tuning.models import load_tokenizer

CLEAN = [
    {"instruction": "Name the capital of France.", "output": "Paris."},
    {"instruction": "Translate 'cat' into German.", "output": "Katze."},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "Four."}, {"role": "user", "content": "And 3+3?"},
                  {"role": "assistant", "content": "Six."}]},
    {"instruction": "Write a haiku about autumn leaves falling slowly.", "output": "Red leaves drift and fall."},
]

LONG = ("The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden porch and "
        "drinks his morning coffee slowly, thinking about the rain that fell last night on the barley fields "
        "behind the red barn, and about the long drive to the market town on Saturday morning with his "
        "daughter and the old grey dog")


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# row number (1-based) -> the problem it carries
CRAFTED = [
    {"instruction": "Say hello.", "output": "Hello!"},                                  # 1 clean
    {"instruction": "  ", "output": ""},                                                # 2 empty_row
    {"instruction": "Say nothing.", "output": "   "},                                  # 3 empty_response
    {"messages": [user("Hi"), user("Hello?"), assistant("Hey.")]},                     # 4 two user turns
    {"messages": [{"role": "system", "content": "S"}, assistant("I start."), user("Ok")]},  # 5 assistant first
    {"messages": [user("Hi"), {"role": "narrator", "content": "x"}, assistant("Hey.")]},  # 6 unknown role
    {"messages": [user("Hi"), assistant("Hello."), user("Bye")]},                      # 7 ends on a user turn
    {"instruction": "Say hello.", "output": "Hello!"},                                  # 8 exact copy of 1
    {"instruction": "say  HELLO.", "output": "hello!"},                                 # 9 copy up to case/space
    {"instruction": LONG, "output": "A fox story."},                                   # 10
    {"instruction": LONG.replace("slowly", "quickly"), "output": "A fox story."},      # 11 near copy of 10
    {"instruction": "Describe the sea.", "output": "The sea is wide and blue. " * 30},  # 12 over max length
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


@pytest.fixture
def fresh_tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


def by_code(report) -> dict:
    return {f.code: f for f in report.findings}


def test_a_clean_dataset_has_no_findings(tokenizer):
    report = lint(CLEAN, tokenizer=tokenizer, max_length=256, validation=[{"instruction": "Other?", "output": "Yes."}])
    assert report.findings == () and not report.blocking and report.rows_checked == 4
    examples = [Example.from_pair("What is 1+1?", "Two.", row=1), Example.from_pair("Name a colour.", "Red.", row=2)]
    assert lint(examples, tokenizer=tokenizer, max_length=256).findings == ()


def test_each_finding_on_a_crafted_dataset(tokenizer):
    report = lint(CRAFTED, tokenizer=tokenizer, max_length=128)
    found = by_code(report)
    expected = {"empty_row": [2], "empty_response": [3], "roles_out_of_order": [4, 5, 6], "ends_on_user": [7],
                "exact_duplicates": [8, 9], "near_duplicates": [11], "over_max_length": [12]}
    assert {code: list(f.rows) for code, f in found.items()} == expected
    for code in ("empty_row", "empty_response", "roles_out_of_order", "ends_on_user"):
        assert found[code].severity == BLOCKING and found[code].fixable
    for code in ("exact_duplicates", "near_duplicates", "over_max_length"):
        assert found[code].severity == WARNING
    assert report.blocking
    reasons = found["roles_out_of_order"].to_dict()["details"]
    assert "both user" in reasons["4"] and "assistant" in reasons["5"] and "narrator" in reasons["6"]
    assert "0.8" in found["near_duplicates"].message and "MinHash" in found["near_duplicates"].message
    assert report.parameters["near_duplicates"]["threshold"] == 0.8
    data = json.loads(json.dumps(report.to_dict()))
    assert data["findings"][0]["count"] == len(data["findings"][0]["rows"])


def test_dropping_the_fixable_rows_leaves_a_clean_dataset(tokenizer):
    report = lint(CRAFTED, tokenizer=tokenizer, max_length=128)
    fixed = drop_rows(CRAFTED, report.rows_to_drop())
    assert fixed == [CRAFTED[0], CRAFTED[9]]  # one of each duplicate group stays
    assert lint(fixed, tokenizer=tokenizer, max_length=128).findings == ()
    only_blocking = drop_rows(CRAFTED, report.rows_to_drop(["empty_row", "ends_on_user"]))
    assert len(only_blocking) == len(CRAFTED) - 2


def test_reply_cut_off_entirely_is_its_own_finding(tokenizer):
    rows = [{"instruction": "Describe the sea " * 60, "output": "Blue."}, {"instruction": "Hi", "output": "Yo."}]
    found = by_code(lint(rows, tokenizer=tokenizer, max_length=40))
    assert list(found["no_response_within_max"].rows) == [1] and list(found["over_max_length"].rows) == [1]


def test_validation_overlap(tokenizer):
    validation = [{"instruction": "NAME the capital of France.", "output": "Paris."},
                  {"instruction": LONG.replace("slowly", "gladly"), "output": "A fox story."},
                  {"instruction": "Something else entirely.", "output": "Yes."}]
    train = CLEAN + [{"instruction": LONG, "output": "A fox story."}]
    found = by_code(lint(train, validation=validation))
    assert list(found["validation_overlap"].rows) == [1, 5]
    assert found["validation_overlap"].severity == WARNING


def test_missing_eos_when_the_template_never_closes_turns(fresh_tokenizer):
    fresh_tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                                     "{% if add_generation_prompt %}assistant: {% endif %}")
    found = by_code(lint(CLEAN, tokenizer=fresh_tokenizer, max_length=256))
    assert list(found["missing_eos"].rows) == [1, 2, 3, 4]
    assert "never closes" in found["missing_eos"].message and not found["missing_eos"].fixable
    assert found["missing_eos"].severity == WARNING


def test_template_refusing_rows_is_blocking(fresh_tokenizer):
    fresh_tokenizer.chat_template = ("{% if messages|length > 2 %}{{ raise_exception('only one exchange') }}{% endif %}"
                                     "{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}")
    found = by_code(lint(CLEAN, tokenizer=fresh_tokenizer, max_length=256))
    assert list(found["template_error"].rows) == [3] and found["template_error"].severity == BLOCKING
    assert "only one exchange" in found["template_error"].to_dict()["details"]["3"]
    assert "missing_eos" not in found  # eos_token after every reply closes the turns


def test_lint_file_uses_file_row_numbers_and_drop_rows_follows_them(tmp_path, tokenizer):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(CLEAN[0]), "", json.dumps(CLEAN[0]), json.dumps({"instruction": "Hi", "output": " "})]
    path.write_text("\n".join(lines) + "\n")
    report = lint_file(path, tokenizer=tokenizer, max_length=256)
    assert {f.code: list(f.rows) for f in report.findings} == {"empty_response": [4], "exact_duplicates": [3]}
    rows = [json.loads(line) for line in lines if line]
    assert drop_rows(rows, report.rows_to_drop(), file_rows=[1, 3, 4]) == [CLEAN[0]]
    with pytest.raises(DatasetError, match="lint this version again"):
        drop_rows(rows, [2], file_rows=[1, 3, 4])


def test_progress_is_reported():
    calls = []
    lint(CLEAN, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (4, 4) and len(calls) == 4


def test_two_assistant_turns_in_a_row_are_not_a_finding(tokenizer):
    rows = [{"messages": [user("Tell me two facts."), assistant("Water is wet."), assistant("Fire is hot.")]}]
    assert lint(rows, tokenizer=tokenizer, max_length=256).findings == ()


def test_text_rows_are_checked_for_emptiness_duplicates_and_length(tokenizer):
    rows = [{"text": "A short story about a cat.", "label": "pets"}, {"text": "  ", "label": "pets"},
            {"text": "a short  story about a CAT.", "label": "pets"}, {"text": "word " * 300, "label": "long"}]
    found = by_code(lint(rows, tokenizer=tokenizer, max_length=100))
    assert {code: list(f.rows) for code, f in found.items()} == {"empty_row": [2], "exact_duplicates": [3],
                                                                  "over_max_length": [4]}


def test_preference_pairs_with_an_empty_or_identical_side_are_flagged(tokenizer):
    rows = [{"prompt": "Hi", "chosen": "Hello there.", "rejected": "Go away."},                       # 1 clean
            {"prompt": "Hi", "chosen": "Hello there.", "rejected": "  hello THERE. "},               # 2 identical
            {"prompt": "Bye", "chosen": "Goodbye.", "rejected": ""},                                  # 3 empty rejected
            {"prompt": "Yo", "chosen": "", "rejected": "Whatever."},                                  # 4 empty chosen
            {"prompt": "Chat", "chosen": [user("Chat"), assistant("Sure, happy to.")],               # 5 conversations
             "rejected": [user("Chat"), assistant("Sure, happy to.")]},
            {"prompt": "Chat", "chosen": [user("Chat"), assistant("Gladly.")],                        # 6 clean
             "rejected": [user("Chat"), assistant("No.")]},
            {"prompt": "Count", "chosen": "one two three four five six seven eight nine ten A",      # 7 same start
             "rejected": "one two three four five six seven eight nine ten B"},
            {"chosen": [user("Q"), assistant("Same.")], "rejected": [user("Q"), assistant("same. ")]},  # 8 no prompt
            {"chosen": [user("Q"), assistant("Yes.")], "rejected": [user("Q"), assistant("No.")]}]      # 9 clean
    found = {f.code: f for f in lint(rows).findings}
    assert {code: list(f.rows) for code, f in found.items()} == {
        "identical_pair": [2, 5, 8], "empty_rejected": [3], "empty_response": [4]}
    assert found["identical_pair"].severity == BLOCKING and "teaches nothing" in found["identical_pair"].message
    assert found["empty_rejected"].severity == BLOCKING and found["empty_rejected"].fixable

    from tuning.data.sft import tokenize_example

    prompt_end = len(tokenize_example(Example.from_pair("Count", "one"), tokenizer, max_length=999,
                                      loss_on_prompt=False).input_ids)
    cut = {f.code: f for f in lint(rows, tokenizer=tokenizer, max_length=prompt_end + 4).findings}  # "one two …" only
    assert list(cut["identical_within_max"].rows) == [7] and cut["identical_within_max"].severity == WARNING
    assert "identical_within_max" not in {f.code for f in lint(rows, tokenizer=tokenizer, max_length=512).findings}


def test_unpaired_rows_flag_unreadable_labels_and_unbalanced_ones():
    """KTO rows: a label that is neither true nor false blocks (the reader refuses it); one label far
    outnumbering the other warns with the weights that make up for it (KTO paper, Eq. 8)."""
    rows = ([{"prompt": f"Q{i}", "completion": f"A{i}", "label": "good"} for i in range(6)]
            + [{"prompt": "Q6", "completion": "A6", "label": "maybe"},
               {"prompt": "Q7", "completion": "A7", "label": 0}, {"prompt": "Q8", "completion": "A8", "label": False}])
    found = {f.code: f for f in lint(rows).findings}
    assert set(found) == {"unreadable_label", "unbalanced_labels"}
    assert list(found["unreadable_label"].rows) == [7] and found["unreadable_label"].severity == BLOCKING
    unbalanced = found["unbalanced_labels"]
    assert unbalanced.severity == WARNING and not unbalanced.fixable and list(unbalanced.rows) == [1, 2, 3, 4, 5, 6]
    assert "6 completions are labelled desirable and 2 undesirable" in unbalanced.message
    assert "desirable weight between 0.33 and 0.44, or undesirable weight between 2.25 and 3.00" in unbalanced.message
    balanced = rows[:4] + rows[7:] + [{"prompt": "Q9", "completion": "A9", "label": "no"}]
    assert not lint(balanced).findings  # 4 desirable to 3 undesirable: within 4/3
