"""Top-k layers: train only the top k transformer blocks and what sits
above them (final norm, an untied output head, a classifier's head); the
lower blocks and the embeddings stay frozen (Lee et al., 2019, "What Would
Elsa Do? Freezing Layers During Transformer Fine-Tuning",
arXiv:1911.03090). A tied output head is the embedding matrix and stays
frozen with it. The output is a whole model directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.blocks import blocks_problems, parameter_depths, train_only
from tuning.methods.common import presets


@dataclass(frozen=True, kw_only=True)
class TopKParams:
    layers: int = setting(2, help="How many of the top transformer blocks to train (the paper finds a quarter "
                                  "of the blocks keeps most of the quality).", min=1, max=1000, basic=True,
                          label="Blocks to train")


PRESETS = presets(quick=(0.0001, {"layers": 2}), balanced=(5e-05, {"layers": 4}), thorough=(3e-05, {"layers": 8}))


def prepare(model, params: TopKParams, context=None):
    depths = parameter_depths(model)
    top = max(depths.values())  # L + 1: above the blocks
    return train_only(model, {name for name, depth in depths.items() if depth >= top - params.layers})


def check(params: TopKParams, model_config, task: str) -> dict[str, str]:
    layers = getattr(model_config, "num_hidden_layers", None)
    if layers is not None and params.layers > layers:
        return {"layers": f"the model has only {layers} transformer blocks"}
    return blocks_problems(model_config, task)
