"""Replies that come back empty say why, and a GGUF output of the studio
answers through its chat template (it once lost the template and answered
nothing: the bug behind "0 pieces" in the playground)."""

import torch

from tuning.generate import _encode, empty_reply_reason, generate_stream
from tuning.loading import load_artifact
from tuning.quantize.common import copy_tokenizer_files
from tuning.quantize.gguf_export import export_gguf, gguf_filename


def _greedy(model, tokenizer, prompt: str, tokens: int) -> list[int]:
    inputs = _encode(tokenizer, prompt, None)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return output[0, inputs["input_ids"].shape[1]:].tolist()


def test_a_gguf_output_beside_its_tokenizer_files_keeps_the_chat_template(tiny_model, tmp_path):
    """The layout run_quantize writes: the .gguf, config.json and the source's tokenizer files."""
    export_gguf(tiny_model, tmp_path / gguf_filename("f16"), gguf_type="f16")
    (tmp_path / "config.json").write_bytes((tiny_model / "config.json").read_bytes())
    copy_tokenizer_files(tiny_model, tmp_path)
    source, source_tokenizer = load_artifact(tiny_model)
    model, tokenizer = load_artifact(tmp_path)

    assert tokenizer.chat_template == source_tokenizer.chat_template != None  # noqa: E711
    assert tokenizer.eos_token == source_tokenizer.eos_token == "<|im_end|>"
    prompt = _encode(tokenizer, "Say hello.", None)["input_ids"][0].tolist()
    assert prompt == _encode(source_tokenizer, "Say hello.", None)["input_ids"][0].tolist()
    assert tokenizer.decode(prompt).startswith("<|im_start|>")
    assert _greedy(model, tokenizer, "Say hello.", 16) == _greedy(source, source_tokenizer, "Say hello.", 16)


def _ends_at_once(model, tokenizer):
    """The model as it behaves when its first token is the end of its turn."""
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.sequence_bias = {(tokenizer.eos_token_id,): 1000.0}
    return model


def test_an_empty_reply_says_the_model_ended_its_turn_at_once(tiny_model):
    model, tokenizer = load_artifact(tiny_model)
    reply = generate_stream(_ends_at_once(model, tokenizer), tokenizer, "Say hello.", max_new_tokens=8)
    assert list(reply) == []
    assert reply.new_token_ids == [tokenizer.eos_token_id]
    assert reply.empty_reason == "the model ended its turn at once: its first token was the end token '<|im_end|>'"


def test_an_empty_reply_names_a_missing_chat_template_of_a_chat_vocabulary(tiny_model):
    model, tokenizer = load_artifact(tiny_model)
    tokenizer.chat_template = None
    reply = generate_stream(_ends_at_once(model, tokenizer), tokenizer, "Say hello.", max_new_tokens=8)
    assert list(reply) == []
    assert "ended its turn at once" in reply.empty_reason
    assert "no chat template although its vocabulary has chat tokens (<|im_start|>)" in reply.empty_reason
    assert "template mismatch" in reply.empty_reason


def test_a_reply_with_text_has_no_empty_reason(tiny_model):
    model, tokenizer = load_artifact(tiny_model)
    reply = generate_stream(model, tokenizer, "Say hello.", max_new_tokens=6)
    pieces = list(reply)
    assert pieces and reply.empty_reason is None
    assert len(reply.new_token_ids) == 6 and "".join(pieces) == reply.text


def test_no_tokens_at_all_is_said_too(tiny_model):
    _, tokenizer = load_artifact(tiny_model)
    assert empty_reply_reason(tokenizer, [], {2}).startswith("the model produced no tokens")
