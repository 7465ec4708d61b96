import pytest

from tuning.config import TrainConfig
from tuning.errors import ConfigError
from tuning.fields import field_specs
from tuning.methods.lora import LoraParams

REQUIRED = {"base_model": "m", "dataset_path": "d.jsonl", "output_dir": "out"}


def test_from_dict_coerces_form_strings_and_applies_defaults():
    config = TrainConfig.from_dict({**REQUIRED, "learning_rate": "0.001", "max_steps": "7", "loss_on_prompt": "on",
                                    "method_params": {"rank": "8"}})
    assert config.learning_rate == 0.001 and config.max_steps == 7 and config.loss_on_prompt is True
    assert config.method_params["rank"] == 8 and config.method_params["alpha"] == 32.0  # default filled in
    assert config.batch_size == 4  # default


def test_from_dict_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict({"dataset_path": "d", "output_dir": "o", "learning_rate": "fast", "batch_size": 0,
                               "scheduler": "zigzag", "colour": "red", "method_params": {"rank": 2.5, "beta": 1}})
    errors = caught.value.errors
    assert errors["base_model"] == "is required"
    assert errors["learning_rate"] == "must be a number"
    assert errors["batch_size"] == "must be at least 1"
    assert errors["scheduler"].startswith("must be one of: cosine, linear, constant")
    assert errors["colour"].startswith("unknown setting")
    assert errors["method_params.rank"] == "must be a whole number"
    assert errors["method_params.beta"].startswith("unknown setting")


def test_unknown_method_is_refused():
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict({**REQUIRED, "method": "magic"})
    assert "method" in caught.value.errors


def test_field_specs_carry_the_metadata_forms_need():
    specs = {spec.name: spec for spec in field_specs(LoraParams)}
    assert specs["rank"].type is int and specs["rank"].min == 1 and specs["rank"].basic
    assert specs["dropout"].type is float and not specs["dropout"].basic
    assert all(spec.help for spec in field_specs(TrainConfig))
