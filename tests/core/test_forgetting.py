"""The forgetting check beyond the held-out text (tests/core/test_judge.py has that): after training on the
command line, and with harness tasks scored on the base and the tune."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuning.fields import config_to_dict

REPO = Path(__file__).resolve().parents[2]


def train_cli(tmp_path, **settings):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    return subprocess.run([sys.executable, "-m", "tuning", "train", str(config_file)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_the_command_line_checks_for_forgetting_after_training(tiny_model, memorisable_jsonl, tmp_path):
    # A learning rate far too high for two steps on four rows: the tune's perplexity on general text moves.
    done = train_cli(tmp_path, base_model=str(tiny_model), dataset_path=str(memorisable_jsonl),
                     output_dir=str(tmp_path / "out"), max_steps=2, batch_size=4, learning_rate=0.3,
                     method_params={"rank": 4}, forgetting_threshold_pct=0.01)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    kinds = [e["kind"] for e in events]
    assert "artifact" in kinds and "forgetting" in kinds, done.stderr[-2000:]
    assert kinds.index("forgetting") > kinds.index("artifact")  # measured on the output, after training
    [check] = [e["data"] for e in events if e["kind"] == "forgetting"]
    assert check["threshold_pct"] == 0.01 and check["change_pct"] != 0  # the trained output, not the base
    assert check["regressed"] == (check["change_pct"] > 0.01)
    assert done.returncode == (4 if check["regressed"] else 0)  # as `python -m tuning forgetting` reports it


def test_the_command_line_refuses_a_forgetting_check_on_a_classifier_before_training(memorisable_jsonl,
                                                                                      tiny_model, tmp_path):
    done = train_cli(tmp_path, base_model=str(tiny_model), dataset_path=str(memorisable_jsonl), task="classify",
                     output_dir=str(tmp_path / "out"), forgetting_threshold_pct=5)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "forgetting_threshold_pct: the forgetting check measures perplexity" in done.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran


@pytest.fixture
def quiz(tmp_path, monkeypatch):
    """A multiple-choice dataset version (12 rows, letter answers), read offline."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    words = "apple river stone cloud music paper orange garden window silver candle forest".split()
    path = tmp_path / "quiz.jsonl"
    path.write_text("".join(json.dumps({"question": f"Which word is number {i}?", "answer": "ABCD"[i % 4],
                                        "choices": [words[(i + c * 5) % len(words)] for c in range(4)]}) + "\n"
                            for i in range(12)))
    return path


def test_harness_scores_of_the_base_and_the_tune_join_the_check(tiny_model, quiz, tmp_path):
    from tests.core.test_judge import damaged_copy
    from tuning.events import MemorySink
    from tuning.forgetting import ForgettingConfig, run_forgetting

    damaged = damaged_copy(tiny_model, tmp_path / "damaged", noise=0.3)
    sink = MemorySink()
    result = run_forgetting(ForgettingConfig.from_dict({
        "artifact_path": str(damaged), "base_model": str(tiny_model), "threshold_pct": 10,
        "harness": {"harness": "multiple_choice", "dataset_path": str(quiz), "batch_size": 4}}), sink)
    assert result.status == "succeeded"
    [event] = sink.of_kind("forgetting")
    by_side = {row["side"]: row for row in event.harness_scores}
    assert set(by_side) == {"artifact", "base"} and by_side["artifact"]["n"] == 12
    assert by_side["artifact"]["higher_is_better"]["acc"] is True
    [change] = event.harness
    assert change["task"] == "studio_quiz" and change["metric"] == "acc"
    assert change["base"] == by_side["base"]["metrics"]["acc"]
    assert change["tuned"] == by_side["artifact"]["metrics"]["acc"]
    # the perplexity on the damaged model regresses in any case; the warning names a harness drop when there is one
    assert event.regressed and result.regressed and event.change_pct > 10
    warning = next(e for e in sink.of_kind("log") if e.level == "warning")
    assert ("studio_quiz acc" in warning.message) == change["regressed"]


def test_the_base_against_itself_shows_no_harness_change(tiny_model, quiz):
    from tuning.events import MemorySink
    from tuning.forgetting import ForgettingConfig, run_forgetting

    sink = MemorySink()
    result = run_forgetting(ForgettingConfig.from_dict({
        "artifact_path": str(tiny_model), "base_model": str(tiny_model), "threshold_pct": 0,
        "harness": {"harness": "multiple_choice", "dataset_path": str(quiz), "max_rows": 8}}), sink)
    [change] = result.harness
    assert change["base"] == change["tuned"] and change["change_pct"] == 0 and not change["regressed"]
    assert not result.regressed  # not even at a threshold of 0


@pytest.mark.parametrize("metric, higher, base, tuned, threshold, regressed", [
    ("acc", True, 0.5, 0.44, 10, True),    # 12% of the base lost
    ("acc", True, 0.5, 0.46, 10, False),   # 8%
    ("acc", True, 0.5, 0.9, 10, False),    # better
    ("acc", True, 0.0, 0.0, 0, False),     # nothing to lose
    ("word_perplexity", False, 20.0, 23.0, 10, True),  # lower is better: 15% higher
    ("word_perplexity", False, 20.0, 21.0, 10, False)])
def test_a_harness_regression_is_a_drop_beyond_the_threshold_in_the_metrics_direction(
        metric, higher, base, tuned, threshold, regressed):
    from tuning.forgetting import harness_changes

    rows = [{"task": "t", "side": side, "metrics": {metric: value, "other": 1.0}, "higher_is_better": {metric: higher}}
            for side, value in (("artifact", tuned), ("base", base))]
    [change] = harness_changes(rows, threshold)
    assert change["metric"] == metric and change["regressed"] is regressed


def test_bad_harness_settings_on_the_check_name_the_setting(tiny_model, quiz):
    from tuning.errors import ConfigError
    from tuning.forgetting import ForgettingConfig

    cases = [({"harness": "off"}, "harness.harness"), ({"harness": "multiple_choice"}, "harness.dataset_path"),
             ({"harness": "named_tasks", "num_fewshot": -1}, "harness.num_fewshot"),
             ({"harness": "multiple_choice", "dataset_path": str(quiz), "colour": 1}, "harness.colour")]
    for harness, field in cases:
        with pytest.raises(ConfigError) as caught:
            ForgettingConfig.from_dict({"artifact_path": "a", "base_model": str(tiny_model), "harness": harness})
        assert field in caught.value.errors, (harness, caught.value.errors)
    config = ForgettingConfig.from_dict({"artifact_path": "a", "base_model": "b", "harness": {
        "harness": "named_tasks", "harness_tasks": "arc_easy"}})
    assert config.harness["harness_tasks"] == "arc_easy" and "artifact_path" not in config.harness
    assert ForgettingConfig.from_dict(config_to_dict(config)) == config  # a stored job's config reads back
