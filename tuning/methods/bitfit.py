"""BitFit: train only the bias terms (Ben Zaken et al., 2022, "BitFit:
Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models", arXiv:2106.10199). A classifier's new head is trained too,
as in the paper. The output is a whole model directory.

Llama-style models (SmolLM, Llama, Mistral, Qwen 3 …) have no biases at
all, and BitFit is then refused rather than quietly training something
else: LN tuning or IA3 are the comparably tiny updates for those.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.errors import ConfigError
from tuning.methods.base import CLASSIFIER_TASKS
from tuning.methods.blocks import head_parameters, train_only
from tuning.methods.common import presets, meta_model


@dataclass(frozen=True, kw_only=True)
class BitfitParams:
    """BitFit has no settings of its own: which parameters train is fixed."""


PRESETS = presets(quick=(0.001, {}), balanced=(0.0005, {}), thorough=(0.0001, {}))


def _biases(model) -> set[str]:
    return {name for name, _ in model.named_parameters() if name.endswith("bias")}


def _no_biases(model) -> str:
    return (f"BitFit trains bias terms only, and {type(model).__name__} has none (Llama-style models are built "
            f"without biases); choose LN tuning or IA3 for a similarly small update")


def prepare(model, params: BitfitParams, context=None):
    biases = _biases(model)
    if not biases:
        raise ConfigError({"method": _no_biases(model)})
    head = head_parameters(model) if context and context.task in CLASSIFIER_TASKS else set()
    return train_only(model, biases | head)


def check(params: BitfitParams, model_config, task: str) -> dict[str, str]:
    model = meta_model(model_config, task)
    return {} if _biases(model) else {"method": _no_biases(model)}
