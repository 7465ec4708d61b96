import pytest

from tuning.data.readers import Example, Message
from tuning.data.sft import IGNORE_INDEX, collate, tokenize_example, tokenize_examples
from tuning.errors import DatasetError
from tuning.models import load_tokenizer

END = "<|im_end|>"  # the end-of-turn token of the tiny model's ChatML template (also its EOS)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


@pytest.fixture
def fresh_tokenizer(tiny_model):
    """A tokenizer a test may change (its chat template)."""
    return load_tokenizer(str(tiny_model))


def labelled_runs(tokenizer, tokenized) -> list[str]:
    """The labelled tokens, decoded one contiguous run at a time."""
    runs, current = [], []
    for token, label in zip(tokenized.input_ids, tokenized.labels):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs, current = runs + [tokenizer.decode(current)], []
    return runs + ([tokenizer.decode(current)] if current else [])


def masked_text(tokenizer, tokenized) -> str:
    return tokenizer.decode([t for t, label in zip(tokenized.input_ids, tokenized.labels) if label == IGNORE_INDEX])


def conversation(*turns, row=7) -> Example:
    return Example(tuple(Message(role, content) for role, content in turns), row)


MULTI = conversation(("system", "Be kind."), ("user", "What is 2+2?"), ("assistant", "Four."),
                     ("user", "And 3+3?"), ("assistant", "Six, of course."))


def test_loss_only_on_the_response_by_default(tokenizer):
    tokenized = tokenize_example(Example.from_pair("What is 2+2?", "Four."), tokenizer, max_length=256,
                                 loss_on_prompt=False)
    assert labelled_runs(tokenizer, tokenized) == ["Four." + END]  # the model learns to stop
    masked = masked_text(tokenizer, tokenized)
    assert "What is 2+2?" in masked and "<|im_start|>assistant" in masked
    assert "You are a helpful AI assistant" in masked  # the template's default system prompt


def test_every_assistant_turn_and_only_those_carry_loss(tokenizer):
    tokenized = tokenize_example(MULTI, tokenizer, max_length=512, loss_on_prompt=False)
    assert labelled_runs(tokenizer, tokenized) == ["Four." + END, "Six, of course." + END]
    masked = masked_text(tokenizer, tokenized)
    for text in ("Be kind.", "What is 2+2?", "And 3+3?", "<|im_start|>user", "<|im_start|>assistant"):
        assert text in masked
    assert tokenized.input_ids == tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in MULTI.messages], tokenize=True)["input_ids"]


def test_an_assistant_turn_with_weight_0_is_context_only(tokenizer):
    example = Example((Message("user", "a"), Message("assistant", "skip me", train=False), Message("user", "b"),
                       Message("assistant", "learn me")))
    tokenized = tokenize_example(example, tokenizer, max_length=256, loss_on_prompt=False)
    assert labelled_runs(tokenizer, tokenized) == ["learn me" + END]


def test_loss_on_prompt_switch_and_truncation(tokenizer):
    full = tokenize_example(MULTI, tokenizer, max_length=256, loss_on_prompt=True)
    assert full.labels == full.input_ids and not full.truncated
    short = tokenize_example(Example.from_pair("Hi", "Hello there"), tokenizer, max_length=5, loss_on_prompt=True)
    assert len(short.input_ids) == 5 == len(short.labels) and short.truncated


def test_rows_truncated_before_any_response_are_left_out(tokenizer):
    long_prompt = Example.from_pair("word " * 200, "ok")
    kept = tokenize_examples([long_prompt, Example.from_pair("Hi", "Hello")], tokenizer, max_length=64,
                             loss_on_prompt=False)
    assert len(kept) == 1 and labelled_runs(tokenizer, kept[0]) == ["Hello" + END]


def test_tokenizers_without_a_chat_template_get_the_fallback(fresh_tokenizer):
    fresh_tokenizer.chat_template = None
    tokenized = tokenize_example(MULTI, fresh_tokenizer, max_length=512, loss_on_prompt=False)
    eos = fresh_tokenizer.eos_token
    assert labelled_runs(fresh_tokenizer, tokenized) == ["Four." + eos, "Six, of course." + eos]
    assert "### Instruction:\nAnd 3+3?" in masked_text(fresh_tokenizer, tokenized)


def test_slow_tokenizers_without_offsets_mask_the_same(tokenizer):
    class NoOffsets:
        """The fast tokenizer, refusing offsets as a slow (Python) one does."""

        chat_template = tokenizer.chat_template
        apply_chat_template = staticmethod(tokenizer.apply_chat_template)

        def __call__(self, text, **kwargs):
            if kwargs.get("return_offsets_mapping"):
                raise NotImplementedError
            return tokenizer(text, **kwargs)

    with_offsets = tokenize_example(MULTI, tokenizer, max_length=512, loss_on_prompt=False)
    assert tokenize_example(MULTI, NoOffsets(), max_length=512, loss_on_prompt=False) == with_offsets


def test_a_template_that_refuses_the_conversation_names_the_row(fresh_tokenizer):
    fresh_tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}"
                                     "{{ raise_exception('System role not supported') }}{% endif %}"
                                     "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(DatasetError) as caught:
        tokenize_example(MULTI, fresh_tokenizer, max_length=64, loss_on_prompt=False, file="chat.jsonl")
    assert (caught.value.file, caught.value.row, caught.value.field) == ("chat.jsonl", 7, "messages")
    assert "System role not supported" in str(caught.value)


def test_a_template_that_breaks_the_prefix_property_is_refused(fresh_tokenizer):
    # Like templates that drop the reasoning of earlier turns: an earlier
    # assistant turn renders differently once a later turn follows.
    fresh_tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: "
                                     "{% if m['role'] == 'assistant' and not loop.last %}(earlier){% else %}"
                                     "{{ m['content'] }}{% endif %}\n{% endfor %}"
                                     "{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(DatasetError) as caught:
        tokenize_example(MULTI, fresh_tokenizer, max_length=256, loss_on_prompt=False, file="chat.jsonl")
    assert caught.value.row == 7 and "renders turn 2 differently" in str(caught.value)
    # Loss on every token needs no turn boundaries, so it still works.
    tokenized = tokenize_example(MULTI, fresh_tokenizer, max_length=256, loss_on_prompt=True)
    assert tokenized.labels == tokenized.input_ids


def test_collate_pads_right_and_masks_padding(tokenizer):
    a = tokenize_example(Example.from_pair("a", "b"), tokenizer, max_length=64, loss_on_prompt=False)
    b = tokenize_example(Example.from_pair("a longer prompt here", "b"), tokenizer, max_length=64,
                         loss_on_prompt=False)
    batch = collate([a, b], pad_token_id=tokenizer.pad_token_id)
    width = max(len(a.input_ids), len(b.input_ids))
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"][0].sum() == len(a.input_ids)
    assert (batch["labels"][0, len(a.input_ids):] == IGNORE_INDEX).all()
    assert batch["labels"][1].tolist() == b.labels
