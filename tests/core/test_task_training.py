"""Continued pre-training and sequence classification through the same loop."""

import json
from pathlib import Path

import pytest
import torch

from tuning.config import TrainConfig
from tuning.events import MemorySink
from tuning.models import prepare_bundled_encoder
from tuning.train import run_train
from tests.tiny_model import CACHE

REVIEWS = [("What a wonderful, delightful film", "positive"), ("Terrible and boring, a waste", "negative"),
           ("I loved every minute of it", "positive"), ("Awful acting, I hated it", "negative")] * 2


@pytest.fixture
def reviews_csv(tmp_path) -> Path:
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f'"{text}",{label}\n' for text, label in REVIEWS))
    return path


def train(base, data, out, **overrides):
    sink = MemorySink()
    config = TrainConfig.from_dict({"base_model": str(base), "dataset_path": str(data), "output_dir": str(out),
                                    "batch_size": 4, "warmup_ratio": 0.0, "precision": "fp32", **overrides})
    return run_train(config, sink), sink


def test_continued_pretraining_on_plain_text(tiny_model, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: the tuning fork hums at four hundred and forty hertz."
                                  for i in range(6)))
    result, sink = train(tiny_model, text, tmp_path / "out", task="pretrain", max_steps=15, learning_rate=0.02,
                         max_length=32, method_params={"rank": 8, "dropout": 0.0})
    losses = [e.loss for e in sink.of_kind("metrics")]
    assert result.status == "succeeded" and losses[-1] < losses[0] * 0.9, losses


def test_classification_on_a_causal_lm_reports_accuracy_and_reloads(tiny_model, reviews_csv, tmp_path):
    result, sink = train(tiny_model, reviews_csv, tmp_path / "out", task="classify", max_steps=20, learning_rate=0.02,
                         validation_ratio=0.25, method_params={"rank": 8, "dropout": 0.0})
    evaluation = sink.of_kind("eval")[-1]
    assert 0.0 <= evaluation.accuracy <= 1.0 and 0.0 <= evaluation.f1 <= 1.0 and evaluation.perplexity is None
    losses = [e.loss for e in sink.of_kind("metrics")]
    assert losses[-1] < losses[0], losses

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    probe = torch.tensor([[1, 300, 4000, 12]])
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2, pad_token_id=2)
    stock = PeftModel.from_pretrained(base, result.output_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(probe).logits, result.model.eval()(probe).logits)
    assert json.loads((Path(result.output_path) / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"


def test_classification_on_the_bundled_encoder(tmp_path, reviews_csv):
    encoder = prepare_bundled_encoder(CACHE / "all-minilm-l6-v2")
    result, sink = train(encoder, reviews_csv, tmp_path / "out", task="classify", max_steps=12, learning_rate=5e-3,
                         validation_ratio=0.5, method_params={"rank": 8, "dropout": 0.0})
    evaluation = sink.of_kind("eval")[-1]
    assert result.status == "succeeded" and evaluation.accuracy >= 0.5
    card = (Path(result.output_path) / "README.md").read_text()
    assert "AutoModelForSequenceClassification" in card and "Accuracy" in card


def test_a_causal_task_on_an_encoder_is_refused(tmp_path, reviews_csv):
    from tuning.errors import ConfigError

    encoder = prepare_bundled_encoder(CACHE / "all-minilm-l6-v2")
    with pytest.raises(ConfigError, match="not a generative"):
        train(encoder, reviews_csv, tmp_path / "out", task="pretrain", max_steps=1)
