"""A base model benchmarked on its own through the harness (no artifact): the run scores the base side
alone, as the harness's own `--model hf` scores the same model, from the library and the command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.core.test_harness import _direct, _write_quiz
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.scoring import EvaluateConfig, run_evaluate

REPO = Path(__file__).resolve().parents[2]
MAPPING = {"harness": "multiple_choice", "question_column": "prompt", "choices_column": "options",
           "answer_column": "key"}


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_a_base_model_alone_scores_as_the_harness_scores_it(tmp_path, tiny_model):
    quiz = tmp_path / "quiz.jsonl"
    _write_quiz(quiz, ["ABCD"[i % 4] for i in range(12)])
    sink = MemorySink()
    result = run_evaluate(EvaluateConfig.from_dict({"base_model": str(tiny_model), "dataset_path": str(quiz),
                                                    "batch_size": 4, **MAPPING}), sink)
    assert result.status == "succeeded"
    [row] = result.metrics["harness"]
    assert row["side"] == "base" and row["n"] == 12
    hand_written = {"task": "quiz_by_hand", "dataset_path": "json", "test_split": "train",
                    "dataset_kwargs": {"data_files": str(quiz)}, "output_type": "multiple_choice",
                    "doc_to_text": "Question: {{prompt}}\nAnswer:", "doc_to_choice": "{{options}}",
                    "doc_to_target": "{{['A', 'B', 'C', 'D'].index(key)}}", "metric_list": [{"metric": "acc"}]}
    direct = _direct(tmp_path, hand_written, pretrained=str(tiny_model))["results"]["quiz_by_hand"]
    assert row["metrics"]["acc"] == pytest.approx(direct["acc,none"], abs=1e-6)
    assert {event.phase for event in sink.of_kind("progress")} == {"studio_quiz · base"}


def test_the_command_line_benchmarks_a_base_model_alone(tmp_path, tiny_model):
    quiz = tmp_path / "quiz.jsonl"
    _write_quiz(quiz, ["A"] * 4)
    config = tmp_path / "evaluate.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(tiny_model), "dataset_path": str(quiz), **MAPPING}))
    done = subprocess.run([sys.executable, "-m", "tuning", "evaluate", str(config)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    [harness] = [json.loads(line)["data"] for line in done.stdout.splitlines() if '"kind": "harness"' in line]
    assert [(row["side"], row["n"]) for row in harness["results"]] == [("base", 4)]


def test_no_artifact_needs_a_base_model_and_a_harness_benchmark(tmp_path):
    with pytest.raises(ConfigError) as caught:
        EvaluateConfig.from_dict({"dataset_path": "d.jsonl", **MAPPING})
    assert "artifact_path" in caught.value.errors
    with pytest.raises(ConfigError) as caught:
        EvaluateConfig.from_dict({"dataset_path": "d.jsonl", "base_model": "m"})
    assert "harness" in caught.value.errors and "base model on its own" in caught.value.errors["harness"]
