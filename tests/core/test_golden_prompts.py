"""Golden prompts: answered before training, at every checkpoint and at the end."""

import pytest


def test_golden_prompts_are_answered_before_training_at_checkpoints_and_at_the_end(tiny_model, memorisable_jsonl,
                                                                                    tmp_path):
    from tuning.config import TrainConfig
    from tuning.errors import ConfigError
    from tuning.events import MemorySink
    from tuning.train import run_train

    sink = MemorySink()
    run_train(TrainConfig.from_dict({
        "base_model": str(tiny_model), "dataset_path": str(memorisable_jsonl), "output_dir": str(tmp_path),
        "max_steps": 5, "save_every": 2, "golden_prompts": ["Greet me.", " Count to three. "],
        "golden_max_new_tokens": 4}), sink)
    answered = sink.of_kind("samples")
    assert [event.step for event in answered] == [0, 2, 4, 5]
    assert [s["prompt"] for s in answered[0].samples] == ["Greet me.", "Count to three."]
    assert all(isinstance(s["answer"], str) for event in answered for s in event.samples)
    with pytest.raises(ConfigError, match="golden_prompts"):
        TrainConfig.from_dict({"base_model": "m", "dataset_path": "d", "output_dir": "o",
                               "golden_prompts": ["a"] * 9})
