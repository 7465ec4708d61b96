"""IncreLoRA: LoRA in SVD form whose rank grows during training where it
matters most (Zhang et al., 2023, "IncreLoRA: Incremental Parameter
Allocation Method for Parameter-Efficient Fine-tuning", arXiv:2308.12043).
peft has no IncreLoRA, so each targeted linear layer is wrapped here
(``tuning.methods.growing``); the output is a stock peft LoRA adapter.

Each module's update is ΔW = B·diag(E)·A · alpha / r, with A (r × in),
B (out × r) and the "singular values" E (r) trained, r the module's current
rank. Every module starts at ``initial_rank`` with E = 0 (no change).

Importance, as the paper's code computes it: after every step, the
sensitivity of a module is s = Σ|ΔW ⊙ ∂L/∂ΔW| / √(numel ΔW), smoothed as in
AdaLoRA: Ī ← β₁Ī + (1−β₁)s, Ū ← β₂Ū + (1−β₂)|s − Ī|, importance Ī·Ū. While
ranks still grow, ΔW is formed as a matrix in the forward so that its
gradient can be read; once they are fixed, the forward is LoRA's low-rank
path. With gradient accumulation the per-micro-batch sensitivities are
summed.

Schedule: after the warm-up, every ``grow_every`` steps, the
``modules_per_round`` most important modules gain ``grow_by`` ranks each,
until the budget (``target_rank`` × modules) is spent; 0 modules per round
spreads the budget evenly over the rounds the run has.

Advance learning (the paper's, on by default): each module also carries
``grow_by`` reserve components whose A and B train ahead with their E fixed
at 1e-5, so a component starts useful the moment it is added; the reserve
is dropped (its E set to 0) when growth ends. The orthogonality penalty on
A and B is AdaLoRA's, reported apart from the task loss. Not carried over:
the paper's learning-rate warm-up restart for newly added components (the
new entries start with zero AdamW moments).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from tuning.fields import setting
from tuning.methods.common import presets
from tuning.methods.growing import (GrowthParams, attach, end_round, export_lora, growing_layers,
                                    growing_linear_class, grow_parameter, growth_problems, ranks_in_use, share_out,
                                    still_growing)
from tuning.methods.growing import penalty as orthogonality_penalty
from tuning.methods.wrapped import wrapped_problems

RESERVE_SCALE = 1e-5  # the fixed E of reserve components (the paper's code)


@dataclass(frozen=True, kw_only=True)
class IncreloraParams(GrowthParams):
    modules_per_round: int = setting(0, help="How many of the most important modules grow each round (top-h in the "
                                             "paper); 0 spreads the budget evenly over the run's growth rounds.",
                                     min=0, max=100000)
    advance_learning: bool = setting(True, help="Train each module's next components ahead of time, with their "
                                                "singular values held at 1e-5, so they start useful when added.",
                                     label="Advance learning")
    beta1: float = setting(0.85, help="Smoothing of the sensitivity average (β₁).", min=0.0, max=0.999)
    beta2: float = setting(0.85, help="Smoothing of the uncertainty average (β₂).", min=0.0, max=0.999)


PRESETS = presets(quick=(0.002, {"initial_rank": 2, "target_rank": 8, "grow_every": 5}),
                  balanced=(0.001, {}),
                  thorough=(0.0005, {"initial_rank": 4, "target_rank": 16, "grow_by": 4}))

export = export_lora  # the hook: each module's update as a plain LoRA pair of its final rank, for stock peft
penalty = orthogonality_penalty  # the hook: AdaLoRA's orthogonality penalty on A and B


@cache
def _layer_class():
    import torch
    from torch import nn

    class IncreLinear(growing_linear_class()):
        """ΔW = B·diag(E)·A · alpha/r, with ``reserve`` extra rows of A and
        columns of B whose E is the fixed ``reserve_scale`` buffer."""

        def __init__(self, base, *, rank: int, alpha: float, dropout: float, reserve: int):
            super().__init__(base, rank=rank, alpha=alpha, dropout=dropout)
            rows = rank + reserve
            self.lora_A = nn.Parameter(self.new_tensor(rows, base.in_features).normal_(0.0, 0.02))
            self.lora_B = nn.Parameter(self.new_tensor(base.out_features, rows).normal_(0.0, 0.02))
            self.lora_E = nn.Parameter(self.new_tensor(rank))  # zero: no change at the start
            for name, value in (("reserve_scale", RESERVE_SCALE if reserve else 0.0), ("growing", 1.0),
                                ("sensitivity", 0.0), ("sensitivity_avg", 0.0), ("uncertainty_avg", 0.0)):
                self.register_buffer(name, self.new_tensor(()).fill_(value))

        @property
        def rank(self) -> int:
            return self.lora_E.shape[0]

        def _singular_values(self):
            reserve = self.lora_A.shape[0] - self.rank
            return torch.cat([self.lora_E, self.reserve_scale.expand(reserve)])

        def delta(self):
            return (self.lora_B * self._singular_values()) @ self.lora_A * self.scaling

        def forward(self, x):
            out = self.base(x)
            x = self.dropout(x)
            if self.training and self.growing and torch.is_grad_enabled():
                delta = self.delta()
                if delta.requires_grad:
                    delta.register_hook(lambda grad, delta=delta.detach(): self._add_sensitivity(delta, grad))
                return out + nn.functional.linear(x, delta.to(x.dtype))
            low_rank = nn.functional.linear(x, (self.lora_A * self._singular_values()[:, None]).to(x.dtype))
            return out + nn.functional.linear(low_rank, self.lora_B.to(x.dtype)) * self.scaling

        def _add_sensitivity(self, delta, grad) -> None:
            with torch.no_grad():
                self.sensitivity += (delta * grad.to(delta.dtype)).abs().sum() / math.sqrt(delta.numel())

        def update_importance(self, beta1: float, beta2: float) -> float:
            """Fold this step's sensitivity into the averages; the importance."""
            with torch.no_grad():
                self.sensitivity_avg.mul_(beta1).add_((1 - beta1) * self.sensitivity)
                self.uncertainty_avg.mul_(beta2).add_((1 - beta2) * (self.sensitivity - self.sensitivity_avg).abs())
                self.sensitivity.zero_()
            return float(self.sensitivity_avg * self.uncertainty_avg)

        def grow(self, ranks: int, optimizer) -> None:
            """Activate ``ranks`` components: the oldest reserve ones (their E
            starts at the reserve's value and now trains), replaced by as many
            new reserve components; without a reserve, new components."""
            with torch.no_grad():
                start = self.reserve_scale.expand(ranks).clone()
                grow_parameter(self.lora_E, start, 0, optimizer)
                grow_parameter(self.lora_A, self.lora_A.new_empty(ranks, self.lora_A.shape[1]).normal_(0.0, 0.02),
                               0, optimizer)
                grow_parameter(self.lora_B, self.lora_B.new_empty(self.lora_B.shape[0], ranks).normal_(0.0, 0.02),
                               1, optimizer)

        def stop_growing(self) -> None:
            with torch.no_grad():
                self.growing.zero_()
                self.reserve_scale.zero_()  # the reserve leaves the update: the saved adapter drops it

        def lora_factors(self):
            """(B, A) of the current rank whose product is ΔW (the reserve, out of use, left out)."""
            rank = self.rank
            return self.lora_B[:, :rank], self.lora_A[:rank] * self.lora_E[:, None] * self.scaling

    return IncreLinear


def prepare(model, params: IncreloraParams, context=None):
    return attach(model, params, context, _layer_class(), reserve=params.grow_by if params.advance_learning else 0)


def modules_per_round(plan, layers: dict) -> int:
    params = plan.params
    if params.modules_per_round:
        return params.modules_per_round
    needed = plan.budget - params.initial_rank * len(layers)
    return max(1, math.ceil(needed / max(1, plan.rounds()) / params.grow_by))


def grow(model, step: int, optimizer) -> list[str]:
    """After every optimizer step: update each module's importance, and on a
    growth round give the most important ones more rank; the log lines."""
    plan, layers = model.tuning_growth, growing_layers(model)
    if not still_growing(layers):
        return []
    params = plan.params
    importance = {name: layer.update_importance(params.beta1, params.beta2) for name, layer in layers.items()}
    grown = share_out(importance, layers, modules=modules_per_round(plan, layers),
                      room=plan.budget - ranks_in_use(layers), grow_by=params.grow_by) if plan.due(step) else {}
    return end_round(step, plan, layers, grown, optimizer)


def check(params: IncreloraParams, model_config, task: str) -> dict[str, str]:
    return growth_problems(params) or wrapped_problems(prepare, params, model_config, task)
