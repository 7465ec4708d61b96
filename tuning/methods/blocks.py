"""Where a model's transformer blocks are, for the methods that choose
parameters by layer (top-k layers, half fine-tuning, layer-wise
learning-rate decay) rather than adding an adapter. Works from the module
tree alone, so it needs no per-architecture table.
"""

from __future__ import annotations

from tuning.errors import ConfigError
from tuning.methods.common import meta_model


def transformer_blocks(model) -> tuple[str, list]:
    """(name, blocks) of the model's stack of transformer blocks: the module
    list with ``num_hidden_layers`` entries holding the most parameters."""
    import torch

    layers = getattr(model.config, "num_hidden_layers", None)
    stacks = [(name, module) for name, module in model.named_modules()
              if isinstance(module, torch.nn.ModuleList) and len(module) == layers]
    if not stacks:
        raise ConfigError({"method": f"cannot find the {layers} transformer blocks of {type(model).__name__}"})
    return max(stacks, key=lambda stack: sum(p.numel() for p in stack[1].parameters()))


def parameter_depths(model) -> dict[str, int]:
    """Depth of every parameter: 0 below the blocks (embeddings), i + 1 in
    block i, L + 1 above them (final norm, output or classification head).
    transformers registers modules from input to output, so a parameter's
    place in ``named_parameters`` says which side of the blocks it is on.
    A tied output head is the embedding matrix and so counts as depth 0."""
    prefix, blocks = transformer_blocks(model)
    depths, above = {}, False
    for name, _ in model.named_parameters():
        if name.startswith(prefix + "."):
            depths[name] = int(name[len(prefix) + 1:].split(".")[0]) + 1
            above = True
        else:
            depths[name] = len(blocks) + 1 if above else 0
    return depths


def head_parameters(model) -> set[str]:
    """A classifier's head (score, classifier …): the parameters outside the
    backbone. It starts untrained, so every method trains it."""
    prefix = model.base_model_prefix + "."
    return {name for name, _ in model.named_parameters() if not name.startswith(prefix)}


def train_only(model, names: set[str]):
    """Freeze every parameter not in ``names``."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)
    return model


def blocks_problems(model_config, task: str) -> dict[str, str]:
    """Refuse a model whose transformer blocks cannot be found."""
    try:
        transformer_blocks(meta_model(model_config, task))
    except ConfigError as exc:
        return exc.errors
    return {}
