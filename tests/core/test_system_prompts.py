"""The system prompt a job trains with (tuning.data.system_prompts): the
template's default is found and shown, a custom one or none replaces it in
rows without their own, the choice reaches the saved tokenizer (so the
playground and stock transformers use it), and bad settings are refused by
field."""

import json

import pytest
from transformers import AutoTokenizer

from tuning.config import TrainConfig
from tuning.data.chat_templates import CHAT_TEMPLATES, use_chat_template
from tuning.data.preview import render_preview
from tuning.data.schemas.conversation import Example, Message
from tuning.data.sft import IGNORE_INDEX, tokenize_example
from tuning.data.system_prompts import (accepts_system_messages, default_system_prompt, describe_system_prompt,
                                        use_system_prompt)
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.generate import _encode
from tuning.loading import load_artifact
from tuning.train import run_train

SMOLLM_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PAIR = Example((Message("user", "Say hello."), Message("assistant", "Hello!")))
OWN_SYSTEM = Example((Message("system", "Be brief."), Message("user", "Say hello."), Message("assistant", "Hello!")))


@pytest.fixture
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)  # the bundled SmolLM2 tokenizer and its template


def rendered(tokenizer, example: Example) -> str:
    return tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in example.messages],
                                         tokenize=False)


def trained_text(tokenizer, example: Example) -> str:
    tokenized = tokenize_example(example, tokenizer, max_length=256, loss_on_prompt=False)
    return tokenizer.decode([i for i, label in zip(tokenized.input_ids, tokenized.labels) if label != IGNORE_INDEX])


def test_the_templates_default_system_prompt_is_found_and_named(tokenizer):
    assert default_system_prompt(tokenizer) == SMOLLM_DEFAULT
    assert SMOLLM_DEFAULT in rendered(tokenizer, PAIR)  # what every row gets unless the job says otherwise
    words = describe_system_prompt(tokenizer)
    assert SMOLLM_DEFAULT in words and words.startswith("the template's default system prompt")
    assert len(f"the model's own chat template; {words}") <= 200  # fits the analysis's field
    for name in CHAT_TEMPLATES:  # the studio's own templates write none
        use_chat_template(tokenizer, name)
        assert default_system_prompt(tokenizer) is None and accepts_system_messages(tokenizer)
        assert "writes none" in describe_system_prompt(tokenizer)


def test_template_keeps_the_rendering_as_it_was(tokenizer):
    before = tokenizer.chat_template
    use_system_prompt(tokenizer, "template")
    assert tokenizer.chat_template == before


def test_a_custom_system_prompt_replaces_the_default_in_rows_without_one(tokenizer):
    custom = 'Answer as "Ada" \\ {{ not jinja }} {% endraw %}\nsecond line 😀'
    words = use_system_prompt(tokenizer, "custom", custom)
    assert words.startswith("system prompt “Answer as") and "for rows without one" in words
    text = rendered(tokenizer, PAIR)
    assert text.startswith(f"<|im_start|>system\n{custom}<|im_end|>\n<|im_start|>user\nSay hello.")
    assert SMOLLM_DEFAULT not in text
    # a row's own system message stays, and is not doubled
    own = rendered(tokenizer, OWN_SYSTEM)
    assert own.startswith("<|im_start|>system\nBe brief.<|im_end|>") and custom not in own
    # the loss still falls on the reply alone
    assert trained_text(tokenizer, PAIR).startswith("Hello!") and "Answer as" not in trained_text(tokenizer, PAIR)
    # and the preview shows it, unlabelled
    [row] = render_preview([PAIR], tokenizer, max_length=256)
    assert any(custom in s["text"] and not s["loss"] for s in row["segments"])


def test_none_clears_the_default(tokenizer):
    words = use_system_prompt(tokenizer, "none")
    assert "is cleared" in words and SMOLLM_DEFAULT in words
    text = rendered(tokenizer, PAIR)
    assert SMOLLM_DEFAULT not in text
    assert text.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nSay hello.")
    assert rendered(tokenizer, OWN_SYSTEM).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert trained_text(tokenizer, PAIR).startswith("Hello!")


def test_none_on_a_template_without_a_default_changes_nothing(tokenizer):
    use_chat_template(tokenizer, "llama3")
    before = tokenizer.chat_template
    assert use_system_prompt(tokenizer, "none") == "no system prompt for rows without one"
    assert tokenizer.chat_template == before


def test_a_custom_prompt_on_a_template_that_drops_system_messages_is_refused(tokenizer):
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] != 'system' %}{{ m['role'] }}: "
                               "{{ m['content'] }}\n{% endif %}{% endfor %}")
    assert not accepts_system_messages(tokenizer)
    with pytest.raises(ValueError, match="drops system messages"):
        use_system_prompt(tokenizer, "custom", "Be brief.")


BASE = {"base_model": "m", "dataset_path": "d", "output_dir": "o"}


@pytest.mark.parametrize("settings, field, message", [
    ({"system_prompt": "custom"}, "system_prompt_text", "write the system prompt"),
    ({"system_prompt": "custom", "system_prompt_text": "   "}, "system_prompt_text", "write the system prompt"),
    ({"system_prompt_text": "Be brief."}, "system_prompt_text", "only when System prompt is custom"),
    ({"system_prompt": "none", "system_prompt_text": "Be brief."}, "system_prompt_text", "(it is none)"),
    ({"system_prompt": "custom", "system_prompt_text": "x" * 4001}, "system_prompt_text", "4001 characters"),
    ({"system_prompt": "none", "task": "pretrain"}, "system_prompt", "sft and preference tasks only"),
    ({"system_prompt": "default"}, "system_prompt", "must be one of: template, custom, none"),
])
def test_bad_settings_are_refused_by_field(settings, field, message):
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(BASE | settings)
    assert message in caught.value.errors[field]


def test_a_run_trains_with_the_custom_prompt_and_the_saved_model_uses_it(tiny_model, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"instruction": "Say hello.", "output": "Hello!"}) + "\n" for _ in range(4)))
    config = TrainConfig.from_dict({"base_model": str(tiny_model), "dataset_path": str(data),
                                    "output_dir": str(tmp_path / "out"), "max_steps": 1, "batch_size": 2,
                                    "precision": "fp32", "system_prompt": "custom",
                                    "system_prompt_text": "You answer in one word."})
    sink = MemorySink()
    result = run_train(config, sink)
    assert any("system prompt “You answer in one word.” for rows without one" in event.message
               for event in sink.of_kind("log"))
    # the adapter ships its tokenizer: with no system prompt given, the playground's prompt carries the custom one
    _, saved = load_artifact(result.output_path, base_model=str(tiny_model))
    prompt = saved.decode(_encode(saved, "Say hello.", None)["input_ids"][0])
    assert prompt.startswith("<|im_start|>system\nYou answer in one word.<|im_end|>") and SMOLLM_DEFAULT not in prompt
    # a system prompt typed in the playground replaces it
    typed = saved.decode(_encode(saved, "Say hello.", "Be brief.")["input_ids"][0])
    assert typed.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "one word" not in typed
