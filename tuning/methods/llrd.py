"""Layer-wise learning-rate decay: full fine-tuning in which each block
learns ``decay`` times as fast as the block above it, so the general
features of the lower layers move least (Zhang et al., 2021, "Revisiting
Few-sample BERT Fine-tuning", arXiv:2006.05987; from ULMFiT's
discriminative fine-tuning and ELECTRA)."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods import full
from tuning.methods.blocks import blocks_problems, parameter_depths
from tuning.methods.common import presets


@dataclass(frozen=True, kw_only=True)
class LlrdParams:
    decay: float = setting(0.9, help="Learning-rate factor per layer going down: the head and final norm get the "
                                     "run's learning rate, the top block lr × decay, the block below lr × decay², "
                                     "… and the embeddings the smallest (the paper uses 0.9 to 0.95).",
                           min=0.05, max=1.0, basic=True, label="Decay per layer")


PRESETS = presets(quick=(0.0001, {"decay": 0.9}), balanced=(5e-05, {"decay": 0.9}), thorough=(3e-05, {"decay": 0.95}))


def prepare(model, params: LlrdParams, context=None):
    return full.prepare(model, params, context)


def param_groups(model, params: LlrdParams, base_lr: float) -> list[dict]:
    """One group per depth (embeddings 0, blocks 1..L, above L + 1), with
    lr × decay^(L + 1 - depth)."""
    depths = parameter_depths(model)
    top = max(depths.values())
    by_depth: dict[int, list] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            by_depth.setdefault(depths[name], []).append(parameter)
    return [{"params": by_depth[depth], "lr": base_lr * params.decay ** (top - depth)} for depth in sorted(by_depth)]


def check(params: LlrdParams, model_config, task: str) -> dict[str, str]:
    return blocks_problems(model_config, task)
