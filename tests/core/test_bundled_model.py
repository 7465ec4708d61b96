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
