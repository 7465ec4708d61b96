"""ETHER and ETHER+: each weight is transformed by hyperplane reflections
(Bini et al., 2024, "ETHER: Efficient Finetuning of Large-Scale Models with
Hyperplane Reflections", arXiv:2405.20271). peft 0.21 has no ETHER, so the
layers are wrapped here (``tuning.methods.wrapped``).

ETHER multiplies a weight W (out × in) on its input side by a block-diagonal
H = diag(H_1 … H_n), each block a Householder reflection
H_i = I - 2 û_i û_iᵀ of a learned vector u_i (û = u / ‖u‖): W' = W H.
A reflection is orthogonal and always exactly ‖H_i - I‖_F = 2 from the
identity, so the update cannot drift far however long it trains; it also
cannot start at the identity (the paper initialises u at random).

ETHER+ relaxes each block to H⁺_i = I - û_i û_iᵀ + v̂_i v̂_iᵀ (no longer
orthogonal, still close to the identity) and, as the paper's ETHER+,
applies one on each side: W' = H⁺_out W H⁺_in. v starts as -u, so H⁺
starts as the identity.

Both are applied to the activations (a reflection of a vector costs O(d)),
never by forming W' while training; the export folds W' into the weights,
so the output is a plain model. The bias is left as it is, as in the paper.
The number of blocks n trades expressiveness for locality; the trainable
count does not depend on it (one d-vector per side and per vector).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.errors import ConfigError
from tuning.fields import setting
from tuning.methods.common import presets, target_modules_setting
from tuning.methods.wrapped import block_linears, export_folded, swap_in, train_wrappers, wrapped_problems

VARIANTS = ("ether", "ether_plus")


@dataclass(frozen=True, kw_only=True)
class EtherParams:
    variant: str = setting("ether", choices=VARIANTS, basic=True, label="Variant",
                           help="'ether': one Householder reflection per block on each weight's input side (a fixed "
                                "distance from the original weights); 'ether_plus': the relaxed form on both sides, "
                                "starting as no change.")
    blocks: int = setting(4, min=1, max=4096, basic=True, label="Blocks",
                          help="Diagonal blocks of each transformation; must divide every targeted layer's width. "
                               "More blocks: more local reflections, less compute.")
    target_modules: str = target_modules_setting()


PRESETS = presets(quick=(0.003, {"blocks": 4}), balanced=(0.002, {"blocks": 4}),
                  thorough=(0.001, {"variant": "ether_plus", "blocks": 4}))


def unit(vectors):
    """Each row scaled to unit length (the hyperplane normals)."""
    return vectors / vectors.norm(dim=-1, keepdim=True)


def reflect(x, u, v=None):
    """Apply the block-diagonal transformation to the last dimension of x:
    with only u, I - 2ûûᵀ per block (ETHER); with v too, I - ûûᵀ + v̂v̂ᵀ
    (ETHER+). u and v are (blocks, width / blocks)."""
    shape = x.shape
    x = x.reshape(*shape[:-1], *u.shape)
    u = unit(u)
    if v is None:
        out = x - 2 * (x * u).sum(-1, keepdim=True) * u
    else:
        v = unit(v)
        out = x - (x * u).sum(-1, keepdim=True) * u + (x * v).sum(-1, keepdim=True) * v
    return out.reshape(shape)


def transform_matrix(u, v=None):
    """The dense block-diagonal matrix ``reflect`` applies (for tests and
    reading; training never forms it)."""
    import torch

    width = u.numel()
    return reflect(torch.eye(width, dtype=u.dtype, device=u.device), u, v)


def _reflected_class():
    import math

    import torch
    from torch import nn

    class Reflected(nn.Module):
        """A frozen linear layer seen through learned reflections: ETHER
        computes W H x + b, ETHER+ H_out W H_in x + b."""

        def __init__(self, base: nn.Linear, blocks: int, plus: bool):
            super().__init__()
            self.base = base
            self.ether_u = nn.Parameter(self._start(base.in_features, blocks, base.weight))
            self.ether_v = self.ether_u_out = self.ether_v_out = None
            if plus:
                self.ether_v = nn.Parameter(-self.ether_u.detach().clone())
                self.ether_u_out = nn.Parameter(self._start(base.out_features, blocks, base.weight))
                self.ether_v_out = nn.Parameter(-self.ether_u_out.detach().clone())

        @staticmethod
        def _start(width: int, blocks: int, weight):
            # As the paper's code: one random vector (Kaiming-uniform), the same in every block.
            row = torch.empty(1, width // blocks, device=weight.device, dtype=torch.float32)
            nn.init.kaiming_uniform_(row, a=math.sqrt(5))
            return row.repeat(blocks, 1)

        def forward(self, x):
            out = nn.functional.linear(reflect(x, self.ether_u, self.ether_v).to(self.base.weight.dtype),
                                       self.base.weight)
            if self.ether_u_out is not None:
                out = reflect(out, self.ether_u_out, self.ether_v_out)
            return out if self.base.bias is None else out + self.base.bias

        def folded(self) -> nn.Linear:
            weight = self.base.weight
            new = reflect(weight.float(), self.ether_u, self.ether_v)  # W H: H is symmetric, so each row is reflected
            if self.ether_u_out is not None:
                new = reflect(new.T, self.ether_u_out, self.ether_v_out).T  # H_out (W H)
            self.base.weight.data = new.to(weight.dtype).contiguous()
            return self.base

    return Reflected


def _refuse_widths(model, names: list[str], blocks: int, *, both_sides: bool) -> None:
    for name in names:
        layer = model.get_submodule(name)
        for width in (layer.in_features, layer.out_features) if both_sides else (layer.in_features,):
            if width % blocks:
                raise ConfigError({"blocks": f"{blocks} does not divide the width {width} of {name}; choose a "
                                             f"divisor of every targeted layer's width"})


def prepare(model, params: EtherParams, context=None):
    names = block_linears(model, params.target_modules)
    plus = params.variant == "ether_plus"
    _refuse_widths(model, names, params.blocks, both_sides=plus)
    reflected = _reflected_class()
    wrappers = swap_in(model, names, lambda name, layer: reflected(layer, params.blocks, plus))
    return train_wrappers(model, wrappers, context)


export = export_folded  # the hook: fold every wrapper back into its linear layer and save a plain model


def check(params: EtherParams, model_config, task: str) -> dict[str, str]:
    return wrapped_problems(prepare, params, model_config, task)
