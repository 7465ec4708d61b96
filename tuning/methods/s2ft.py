"""S²FT: structured sparse fine-tuning (Yang et al., 2024, "S²FT: Efficient,
Scalable and Generalizable LLM Fine-tuning by Structured Sparsity",
arXiv:2412.06289). In every block a few attention heads and a few FFN
channels are chosen, and only the weights that read them are updated: the
attention output projection's columns of the chosen heads and the FFN down
projection's columns of the chosen channels. Everything else is frozen.

The paper permutes the chosen columns together so that the update is one
dense matrix per layer; here each projection keeps its weight frozen and
gains a dense (out × chosen) update added to the chosen columns, which is
the same function, the same gradients, and trains only the chosen entries'
worth of parameters and optimizer state. The export adds the update into
those columns, so the output is the base architecture with some columns
changed in place: a plain model directory.

Heads and channels are chosen at random with the seed, independently in each
block.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tuning.errors import ConfigError
from tuning.fields import setting
from tuning.methods.common import presets
from tuning.methods.wrapped import block_linears, export_folded, swap_in, train_wrappers, wrapped_problems


@dataclass(frozen=True, kw_only=True)
class S2ftParams:
    heads: int = setting(1, min=0, max=4096, basic=True, label="Heads per block",
                         help="Attention heads per block whose output-projection columns train.")
    channels: int = setting(32, min=0, max=1_000_000, basic=True, label="FFN channels per block",
                            help="FFN channels per block whose down-projection columns train.")
    seed: int = setting(0, min=0, max=2**31 - 1, help="Seed choosing the heads and channels.")
    attention_output: str = setting("o_proj", help="Name of the attention output projection in each block "
                                                   "(o_proj in Llama, Qwen, Mistral; dense in some others).")
    ffn_output: str = setting("down_proj", help="Name of the FFN down projection in each block (down_proj in "
                                                "Llama, Qwen, Mistral; fc2 or c_proj in others).")


PRESETS = presets(quick=(0.001, {"heads": 1, "channels": 32}), balanced=(0.0005, {"heads": 1, "channels": 32}),
                  thorough=(0.0003, {"heads": 2, "channels": 64}))


def _sparse_columns_class():
    import torch
    from torch import nn

    class SparseColumns(nn.Module):
        """A frozen linear layer whose chosen input columns train:
        y = W x + b + Δ x[columns], i.e. W[:, columns] += Δ."""

        def __init__(self, base: nn.Linear, columns: list[int]):
            super().__init__()
            self.base = base
            device = base.weight.device
            self.register_buffer("columns", torch.tensor(columns, dtype=torch.long, device=device), persistent=False)
            self.s2ft_delta = nn.Parameter(torch.zeros(base.out_features, len(columns), device=device))

        def forward(self, x):
            return self.base(x) + nn.functional.linear(x.index_select(-1, self.columns), self.s2ft_delta)

        def folded(self) -> nn.Linear:
            weight = self.base.weight
            weight.data[:, self.columns] += self.s2ft_delta.to(weight.dtype)
            return self.base

    return SparseColumns


def _head_count(model) -> int:
    config = getattr(model.config, "text_config", None) or model.config
    return getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 0)


def chosen_columns(model, params: S2ftParams) -> dict[str, list[int]]:
    """{projection name: its input columns that train}: whole heads of each
    attention output projection, single channels of each down projection."""
    rng, chosen = random.Random(params.seed), {}
    heads = _head_count(model)
    attention = block_linears(model, params.attention_output, blame="attention_output") if params.heads else []
    ffn = block_linears(model, params.ffn_output, blame="ffn_output") if params.channels else []
    for name in attention:
        width = model.get_submodule(name).in_features
        if params.heads > heads:
            raise ConfigError({"heads": f"the model has only {heads} attention heads per block"})
        head_dim = width // heads
        chosen[name] = sorted(c for h in rng.sample(range(heads), params.heads)
                              for c in range(h * head_dim, (h + 1) * head_dim))
    for name in ffn:
        width = model.get_submodule(name).in_features
        if params.channels > width:
            raise ConfigError({"channels": f"{name} has only {width} channels"})
        chosen[name] = sorted(rng.sample(range(width), params.channels))
    return chosen


def prepare(model, params: S2ftParams, context=None):
    if not params.heads and not params.channels:
        raise ConfigError({"heads": "choose at least one head or one channel to train"})
    columns = chosen_columns(model, params)
    sparse = _sparse_columns_class()
    wrappers = swap_in(model, list(columns), lambda name, layer: sparse(layer, columns[name]))
    return train_wrappers(model, wrappers, context)


export = export_folded  # the hook: fold every wrapper back into its linear layer and save a plain model


def check(params: S2ftParams, model_config, task: str) -> dict[str, str]:
    return wrapped_problems(prepare, params, model_config, task)
