"""Every numeric setting of every config (training, each method's and merge
method's parameters, merge, quantize, evaluate) refuses NaN, ±infinity and
numbers too large to hold with a field error, whether it arrives as a
number (the API, YAML) or as text (a form, the CLI)."""

import math

import pytest
from hypothesis import given, settings, strategies as st

from tuning.config import TrainConfig
from tuning.errors import ConfigError
from tuning.fields import LARGEST_INT, config_from_dict, field_specs
from tuning.merge import MERGE_METHODS
from tuning.merge.config import MergeConfig
from tuning.methods import METHODS
from tuning.quantize.config import QuantizeConfig
from tuning.scoring import EvaluateConfig

# In table order, once each (a set would order them differently in each xdist worker).
CONFIGS = list(dict.fromkeys([TrainConfig, MergeConfig, QuantizeConfig, EvaluateConfig,
                              *(method.params for method in METHODS.values()),
                              *(method.params for method in MERGE_METHODS.values())]))
NUMERIC_FIELDS = [(cls, spec) for cls in CONFIGS for spec in field_specs(cls) if spec.type in (int, float)]

BAD_FLOATS = st.sampled_from([math.nan, math.inf, -math.inf, "nan", "NaN", "inf", "-Infinity", "1e400", "-1e999"])
BAD_INTS = st.one_of(BAD_FLOATS, st.integers(min_value=LARGEST_INT + 1), st.integers(max_value=-LARGEST_INT - 1),
                     st.integers(min_value=LARGEST_INT + 1).map(str))


def test_the_configs_have_numeric_settings_to_check():
    assert len(NUMERIC_FIELDS) > 40 and any(spec.name == "learning_rate" for _, spec in NUMERIC_FIELDS)


@pytest.mark.parametrize("cls, spec", NUMERIC_FIELDS, ids=[f"{c.__name__}.{s.name}" for c, s in NUMERIC_FIELDS])
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_non_finite_and_oversized_numbers_are_field_errors(cls, spec, data):
    value = data.draw(BAD_FLOATS if spec.type is float else BAD_INTS)
    with pytest.raises(ConfigError) as refused:
        config_from_dict(cls, {spec.name: value}, prefix="x.")
    assert "x." + spec.name in refused.value.errors, refused.value.errors


def test_a_nan_learning_rate_is_refused_by_the_training_config_naming_the_field():
    with pytest.raises(ConfigError) as refused:
        TrainConfig.from_dict({"base_model": "m", "dataset_path": "d.jsonl", "output_dir": "o",
                               "learning_rate": float("nan")})
    assert refused.value.errors == {"learning_rate": "must be a finite number"}
