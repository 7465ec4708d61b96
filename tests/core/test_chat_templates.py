"""Named chat templates (tuning.data.chat_templates): each renders system,
user and assistant turns so that SFT finds the replies to train on; "auto"
keeps the model's own; the preview and a training run use the chosen one,
and the trained output carries it into the playground."""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tuning.config import TrainConfig
from tuning.data.chat_templates import CHAT_TEMPLATES, use_chat_template
from tuning.data.preview import render_preview
from tuning.data.schemas.conversation import Example, Message
from tuning.data.sft import IGNORE_INDEX, tokenize_example
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.loading import load_artifact
from tuning.merge import run_merge
from tuning.merge.config import MergeConfig
from tuning.train import run_train

CONVERSATION = Example((Message("system", "Be brief."), Message("user", "Say hello."),
                        Message("assistant", "Hello!"), Message("user", "Again."), Message("assistant", "Hi!")))


@pytest.mark.parametrize("name", list(CHAT_TEMPLATES))
def test_every_template_keeps_the_system_prompt_and_trains_on_the_replies_only(tiny_model, name):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    use_chat_template(tokenizer, name)
    text = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in CONVERSATION.messages],
                                         tokenize=False)
    assert "Be brief." in text and text.index("Be brief.") < text.index("Say hello.")
    tokenized = tokenize_example(CONVERSATION, tokenizer, max_length=256, loss_on_prompt=False)
    trained = tokenizer.decode([i for i, label in zip(tokenized.input_ids, tokenized.labels) if label != IGNORE_INDEX])
    assert "Hello!" in trained and "Hi!" in trained
    assert "Say hello." not in trained and "Be brief." not in trained


def test_auto_keeps_the_models_own_and_falls_back_when_it_has_none(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    own = tokenizer.chat_template
    assert use_chat_template(tokenizer, "auto") == "the model's own chat template"
    assert tokenizer.chat_template == own
    tokenizer.chat_template = None
    assert "(the model has none)" in use_chat_template(tokenizer, "auto")
    assert tokenizer.chat_template == CHAT_TEMPLATES["instruction"].template
    assert use_chat_template(tokenizer, "gemma").startswith("the Gemma")
    assert tokenizer.chat_template == CHAT_TEMPLATES["gemma"].template
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
        use_chat_template(tokenizer, "vicuna")


def test_the_preview_shows_the_chosen_template(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    use_chat_template(tokenizer, "llama3")
    [row] = render_preview([CONVERSATION], tokenizer, max_length=256)
    text = "".join(segment["text"] for segment in row["segments"])
    assert text.startswith(tokenizer.bos_token + "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    # (this vocabulary has no <|eot_id|> token: the marker is learned as pieces, one may join the next marker)
    replies = [s["text"] for s in row["segments"] if s["loss"]]
    assert len(replies) == 2 and replies[0].startswith("Hello!<|eot_id|>") and replies[1].startswith("Hi!<|eot_id|>")


def test_a_training_run_renders_with_the_chosen_template_and_saves_it(tiny_model, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"instruction": "Say hello.", "output": "Hello!"}) + "\n" for _ in range(4)))
    config = TrainConfig.from_dict({"base_model": str(tiny_model), "dataset_path": str(data),
                                    "output_dir": str(tmp_path / "out"), "max_steps": 1, "batch_size": 2,
                                    "precision": "fp32", "chat_template": "mistral"})
    sink = MemorySink()
    result = run_train(config, sink)
    assert any("Mistral [INST]" in event.message for event in sink.of_kind("log"))
    # the adapter ships the tokenizer with the template it was trained with, which the playground loads
    _, tokenizer = load_artifact(result.output_path, base_model=str(tiny_model))
    assert tokenizer.chat_template == CHAT_TEMPLATES["mistral"].template
    # and a fold keeps it
    merge = MergeConfig.from_dict({"method": "fold", "base_model": str(tiny_model), "output_dir": str(tmp_path / "f"),
                                   "sources": [result.output_path]})
    folded = run_merge(merge, MemorySink()).output_path
    assert AutoTokenizer.from_pretrained(folded).chat_template == CHAT_TEMPLATES["mistral"].template


def test_an_adapter_on_the_models_own_template_ships_no_tokenizer(tiny_model, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"instruction": "Say hello.", "output": "Hello!"}) + "\n" for _ in range(4)))
    config = TrainConfig.from_dict({"base_model": str(tiny_model), "dataset_path": str(data),
                                    "output_dir": str(tmp_path / "out"), "max_steps": 1, "batch_size": 2,
                                    "precision": "fp32"})
    result = run_train(config, MemorySink())
    assert not (Path(result.output_path) / "tokenizer.json").exists()


def test_an_unknown_template_is_refused_by_field():
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict({"base_model": "m", "dataset_path": "d", "output_dir": "o", "chat_template": "vicuna"})
    assert "chat_template" in caught.value.errors
