"""IA3: learned vectors that rescale keys, values and feed-forward
activations (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is
Better and Cheaper than In-Context Learning", arXiv:2205.05638), through
peft."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import peft_task_type, presets, refusals, targets


@dataclass(frozen=True, kw_only=True)
class Ia3Params:
    target_modules: str = setting("default", help="Comma-separated module names to rescale, or 'default': keys, "
                                                  "values and the feed-forward output, as in the paper.")
    feedforward_modules: str = setting("default", help="Which target modules are feed-forward layers (IA3 scales "
                                                       "their input rather than their output); 'default' with "
                                                       "default targets.")


PRESETS = presets(quick=(0.01, {}), balanced=(0.005, {}), thorough=(0.003, {}))


def prepare(model, params: Ia3Params, context=None):
    from peft import IA3Config, get_peft_model

    config = IA3Config(target_modules=targets(params.target_modules),
                       feedforward_modules=targets(params.feedforward_modules),
                       task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: Ia3Params, model_config, task: str) -> dict[str, str]:
    return refusals(prepare, params, model_config, task, blame="target_modules")
