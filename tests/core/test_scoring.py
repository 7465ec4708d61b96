"""The evaluate run: any artifact, scored on a dataset."""

import math

import pytest

from tuning.config import TrainConfig
from tuning.errors import ModelError
from tuning.events import MemorySink
from tuning.metrics import exact_match, rouge_l
from tuning.scoring import EvaluateConfig, run_evaluate
from tuning.train import run_train


@pytest.mark.parametrize("generated, expected, score", [
    ("the cat sat on the mat", "the cat is on the mat", 5 / 6),  # LCS 5 of 6 words both ways
    ("Blue.", "blue", 1.0),
    ("red", "blue", 0.0),
    ("", "", 1.0),
    ("one two three", "three two one", 1 / 3),
])
def test_rouge_l(generated, expected, score):
    assert rouge_l(generated, expected) == pytest.approx(score)


def test_exact_match_ignores_case_and_outer_punctuation():
    assert exact_match("Hello!", "hello") == 1.0
    assert exact_match("Hello there", "hello") == 0.0


@pytest.fixture(scope="module")
def trained_adapter(tiny_model, tmp_path_factory):
    import json

    data = tmp_path_factory.mktemp("eval-data") / "pairs.jsonl"
    rows = [{"instruction": "Say the colour of the sky.", "output": "Blue."},
            {"instruction": "Greet me.", "output": "Hello!"}] * 2
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path_factory.mktemp("eval-train")
    config = TrainConfig.from_dict({"base_model": str(tiny_model), "dataset_path": str(data), "output_dir": str(out),
                                    "max_steps": 30, "batch_size": 4, "learning_rate": 0.03, "warmup_ratio": 0.0,
                                    "precision": "fp32", "method_params": {"rank": 8, "alpha": 16, "dropout": 0.0}})
    result = run_train(config, MemorySink())
    return result.output_path, data


def _evaluate(path, data, **overrides):
    sink = MemorySink()
    config = EvaluateConfig.from_dict({"artifact_path": str(path), "dataset_path": str(data), "max_new_tokens": 6,
                                       "generate_rows": 2, **overrides})
    return run_evaluate(config, sink), sink


def test_an_adapter_scores_lower_loss_than_its_base(trained_adapter, tiny_model):
    adapter, data = trained_adapter
    tuned, sink = _evaluate(adapter, data, base_model=str(tiny_model))
    base, _ = _evaluate(tiny_model, data)

    assert tuned.status == "succeeded"
    assert tuned.metrics["eval_loss"] < base.metrics["eval_loss"]
    assert tuned.metrics["perplexity"] == pytest.approx(math.exp(tuned.metrics["eval_loss"]), rel=1e-3)
    assert 0.0 <= tuned.metrics["rouge_l"] <= 1.0 and 0.0 <= tuned.metrics["exact_match"] <= 1.0
    assert len(tuned.metrics["samples"]) == 2 and tuned.metrics["samples"][0]["expected"] == "Blue."
    [event] = sink.of_kind("eval")
    assert event.eval_loss == tuned.metrics["eval_loss"] and event.rouge_l == tuned.metrics["rouge_l"]
    phases = {e.phase for e in sink.of_kind("progress")}
    assert phases == {"Scoring rows", "Generating answers"}
    last = sink.of_kind("progress")[-1]
    assert last.done == last.total == 2


def test_an_adapter_without_its_base_is_refused_with_the_fix(trained_adapter):
    adapter, data = trained_adapter
    with pytest.raises(ModelError, match="name the base model"):
        _evaluate(adapter, data)
