"""Full fine-tuning: every weight is trained (the baseline of every paper
here; Howard & Ruder, 2018, "Universal Language Model Fine-tuning",
arXiv:1801.06146). The output is a whole model directory."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.methods.common import presets


@dataclass(frozen=True, kw_only=True)
class FullParams:
    """Full fine-tuning has no settings of its own: the run's learning rate,
    weight decay and schedule are what matter."""


PRESETS = presets(quick=(5e-05, {}), balanced=(3e-05, {}), thorough=(2e-05, {}))


def prepare(model, params: FullParams, context=None):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
