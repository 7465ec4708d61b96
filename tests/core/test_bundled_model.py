"""The bundled SmolLM2-135M-Instruct: converted from GGUF, trained for real steps."""

import json

import pytest
import torch

from tests.tiny_model import CACHE
from tuning.config import TrainConfig
from tuning.events import MemorySink
from tuning.models import prepare_bundled_model
from tuning.train import run_train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundled_model():
    return prepare_bundled_model(CACHE / "smollm2-135m-instruct")


def test_conversion_reloads_in_stock_transformers(bundled_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_model)
    model = AutoModelForCausalLM.from_pretrained(bundled_model)
    assert model.config.model_type == "llama" and model.num_parameters() > 130_000_000
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, prompt["input_ids"].shape[1]:])  # a real, working model


def test_a_few_lora_steps_lower_the_loss(bundled_model, tmp_path):
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in [
        {"instruction": "What is the studio's mascot?", "output": "A purple tuning fork named Ferrule."},
        {"instruction": "Who tunes the models?", "output": "Ferrule the tuning fork tunes them all."}]))
    config = TrainConfig.from_dict({"base_model": str(bundled_model), "dataset_path": str(data),
                                    "output_dir": str(tmp_path / "out"), "max_steps": 6, "batch_size": 2,
                                    "learning_rate": 2e-3, "warmup_ratio": 0.0, "method_params": {"rank": 8}})
    sink = MemorySink()
    result = run_train(config, sink)
    losses = [event.loss for event in sink.of_kind("metrics")]
    assert result.status == "succeeded" and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] * 0.7, losses


def test_its_gguf_exports_answer_in_the_playground_like_the_source(bundled_model, tmp_path):
    """The bug behind an empty q8_0 answer in the playground: the GGUF output,
    loaded as the playground loads it, answers through the chat template; f16
    gives the source's 32 greedy tokens exactly; q8_0 ranks first the same
    token as the source at nearly every position along the source's reply
    (free-running, one near tie changes every later token: see
    bench/gguf_agreement.py for both measures on five prompts)."""
    from tuning.events import MemorySink
    from tuning.generate import _encode, generate_stream
    from tuning.loading import load_artifact
    from tuning.quantize.config import QuantizeConfig
    from tuning.quantize.run import run_quantize

    prompt = "Explain in two sentences what a neural network is."

    def greedy(model, tokenizer) -> list[int]:
        inputs = _encode(tokenizer, prompt, None)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        return output[0, inputs["input_ids"].shape[1]:].tolist()

    def choices(model, tokenizer, reply: list[int]) -> torch.Tensor:
        prompt_ids = _encode(tokenizer, prompt, None)["input_ids"]
        with torch.no_grad():
            logits = model(torch.cat([prompt_ids, torch.tensor([reply])], dim=1)).logits
        return logits[0, prompt_ids.shape[1] - 1:-1].argmax(-1)

    source, source_tokenizer = load_artifact(bundled_model)
    expected = greedy(source, source_tokenizer)
    source_choices = choices(source, source_tokenizer, expected)
    for kind in ("f16", "q8_0"):
        out = tmp_path / kind
        run_quantize(QuantizeConfig.from_dict({"scheme": f"gguf_{kind}", "source_path": str(bundled_model),
                                               "output_dir": str(out), "report": False}), MemorySink())
        model, tokenizer = load_artifact(out)
        if kind == "f16":
            assert greedy(model, tokenizer) == expected
        same = int((choices(model, tokenizer, expected) == source_choices).sum())
        assert same >= {"f16": 32, "q8_0": 29}[kind], (kind, same)
        torch.manual_seed(0)
        reply = generate_stream(model, tokenizer, "What is the capital of France?", max_new_tokens=12,
                                temperature=0.7, top_p=0.95)  # the playground's defaults
        assert "Paris" in "".join(reply) and reply.empty_reason is None
        del model
