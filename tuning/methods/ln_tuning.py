"""LN tuning: train only the normalisation layers (Zhao et al., 2023,
"Tuning LayerNorm in Attention: Towards Efficient Multi-Modal LLM
Finetuning", arXiv:2312.11420), through peft, which saves them as an
adapter."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import peft_task_type, presets, refusals, targets


@dataclass(frozen=True, kw_only=True)
class LnTuningParams:
    target_modules: str = setting("default", help="Comma-separated names of the normalisation layers to train, "
                                                  "or 'default': every one of them.")


PRESETS = presets(quick=(0.01, {}), balanced=(0.005, {}), thorough=(0.002, {}))


def prepare(model, params: LnTuningParams, context=None):
    from peft import LNTuningConfig, get_peft_model

    config = LNTuningConfig(target_modules=targets(params.target_modules),
                            task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: LnTuningParams, model_config, task: str) -> dict[str, str]:
    return refusals(prepare, params, model_config, task, blame="target_modules")
