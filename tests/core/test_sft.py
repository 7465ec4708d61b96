import pytest

from tuning.data.readers import Example
from tuning.data.sft import IGNORE_INDEX, collate, tokenize_example
from tuning.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(str(tiny_model))


def test_loss_only_on_the_response_by_default(tokenizer):
    tokenized = tokenize_example(Example(prompt="What is 2+2?", response="Four."), tokenizer, max_length=256,
                                 loss_on_prompt=False)
    labelled = [t for t, label in zip(tokenized.input_ids, tokenized.labels) if label != IGNORE_INDEX]
    text = tokenizer.decode(labelled)
    assert text.startswith("Four.") and "What is 2+2?" not in text
    assert tokenizer.eos_token_id in labelled  # the model learns to stop
    masked = tokenizer.decode([t for t, label in zip(tokenized.input_ids, tokenized.labels) if label == IGNORE_INDEX])
    assert "What is 2+2?" in masked and "<|im_start|>assistant" in masked


def test_loss_on_prompt_switch_and_truncation(tokenizer):
    full = tokenize_example(Example(prompt="Hi", response="Hello there"), tokenizer, max_length=256,
                            loss_on_prompt=True)
    assert full.labels == full.input_ids
    short = tokenize_example(Example(prompt="Hi", response="Hello there"), tokenizer, max_length=5,
                             loss_on_prompt=True)
    assert len(short.input_ids) == 5 == len(short.labels)


def test_collate_pads_right_and_masks_padding(tokenizer):
    a = tokenize_example(Example(prompt="a", response="b"), tokenizer, max_length=64, loss_on_prompt=False)
    b = tokenize_example(Example(prompt="a longer prompt here", response="b"), tokenizer, max_length=64,
                         loss_on_prompt=False)
    batch = collate([a, b], pad_token_id=tokenizer.pad_token_id)
    width = max(len(a.input_ids), len(b.input_ids))
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"][0].sum() == len(a.input_ids)
    assert (batch["labels"][0, len(a.input_ids):] == IGNORE_INDEX).all()
