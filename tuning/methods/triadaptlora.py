"""TriAdaptLoRA: a low-rank update with a square core whose rank grows by
triangular strips, where the core changed most (Liang, Wang and Zeng, 2025,
"TriAdaptLoRA: Brain-Inspired Triangular Adaptive Low-Rank Adaptation for
Parameter-Efficient Fine-Tuning", arXiv:2501.08008). peft has no
TriAdaptLoRA, so each targeted linear layer is wrapped here
(``tuning.methods.growing``); the output is a stock peft LoRA adapter.

Each module's update is ΔW = B·C·A · alpha / r, with A (r × in), the core
C (r × r) and B (out × r) trained, r the module's current rank.

Triangular split: growing by k adds a strip of k rows across the whole new
width of C (its lower-triangular part) and a strip of k columns down its
whole new height (the upper part), with k new rows of A and columns of B;
every earlier entry stays. The authors' code keeps each strip as its own
tensor and sums them; here C is one matrix that grows, the same set of
updates. New strips start at zero but for the identity on the new diagonal
block, new rows of A as LoRA's A, new columns of B at zero, so growing adds
no change (but for the alpha / r rescaling both papers apply).

Importance: the Frobenius norm of C divided by its number of blocks (one
per growth, the first included), and a module's score at a growth round is
how much that normalised norm rose by training since the previous round
(the step a module grows resets its reference, so the new identity block
is not counted as a rise).

Threshold-driven growth: at a round, a fraction p = (t − t_warmup) /
(t_end − t_warmup) into the growth phase, the number of modules that grow is
⌊R·p⌋ (``linear``) or ⌊R^p⌋ (``exponential``), at least 1, R the ranks the
budget has left (the authors' formula); the threshold is that many modules'
lowest score, and the modules above it gain ``grow_by`` ranks each, never
beyond the budget (exact ties at the threshold do not let more through).
The orthogonality penalty on A and B is AdaLoRA's, as in the authors'
code, reported apart from the task loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from tuning.fields import setting
from tuning.methods.common import presets
from tuning.methods.growing import (GrowthParams, attach, end_round, export_lora, growing_layers,
                                    growing_linear_class, grow_parameter, growth_problems, ranks_in_use, share_out,
                                    still_growing, uniform_rows)
from tuning.methods.growing import penalty as orthogonality_penalty
from tuning.methods.wrapped import wrapped_problems

CURVES = ("linear", "exponential")


@dataclass(frozen=True, kw_only=True)
class TriadaptloraParams(GrowthParams):
    initial_rank: int = setting(1, help="Rank every targeted module starts with.", min=1, max=1024, basic=True,
                                label="Initial rank")
    grow_by: int = setting(4, help="Ranks a module gains each time its score clears the threshold.", min=1,
                           max=256, label="Rank increment")
    growth_curve: str = setting("linear", choices=CURVES, label="Growth curve",
                                help="How many modules may grow at a round as the run goes on: 'linear' (the "
                                     "remaining budget times the fraction of the growth phase done; the paper's "
                                     "best) or 'exponential' (the remaining budget to that power).")
    orthogonality_weight: float = setting(0.5, help="Weight of the penalty keeping the rows of A and the columns of "
                                                    "B orthonormal, added to the loss.", min=0.0, max=10.0)


PRESETS = presets(quick=(0.002, {"initial_rank": 1, "target_rank": 8, "grow_every": 5}),
                  balanced=(0.001, {}),
                  thorough=(0.0005, {"initial_rank": 2, "target_rank": 16}))

export = export_lora  # the hook: each module's update as a plain LoRA pair of its final rank, for stock peft
penalty = orthogonality_penalty  # the hook: AdaLoRA's orthogonality penalty on A and B


@cache
def _layer_class():
    import torch
    from torch import nn

    class TriLinear(growing_linear_class()):
        """ΔW = B·C·A · alpha/r; ``blocks`` counts C's growth blocks and
        ``previous_norm`` is its normalised norm at the last round."""

        def __init__(self, base, *, rank: int, alpha: float, dropout: float):
            super().__init__(base, rank=rank, alpha=alpha, dropout=dropout)
            self.lora_A = nn.Parameter(uniform_rows(rank, base.in_features, self.new_tensor(())))
            self.lora_C = nn.Parameter(torch.eye(rank, device=self.base.weight.device))
            self.lora_B = nn.Parameter(self.new_tensor(base.out_features, rank))
            for name, value in (("blocks", 1.0), ("previous_norm", math.sqrt(rank)), ("growing", 1.0)):
                self.register_buffer(name, self.new_tensor(()).fill_(value))  # ‖I_r‖_F: the start's norm

        @property
        def rank(self) -> int:
            return self.lora_A.shape[0]

        def forward(self, x):
            low_rank = nn.functional.linear(self.dropout(x), self.lora_A.to(x.dtype))
            low_rank = nn.functional.linear(low_rank, self.lora_C.to(x.dtype))
            return self.base(x) + nn.functional.linear(low_rank, self.lora_B.to(x.dtype)) * self.scaling

        def normalised_norm(self):
            return torch.linalg.matrix_norm(self.lora_C.detach(), ord="fro") / self.blocks

        def score(self) -> float:
            """How much ‖C‖_F / blocks rose since the last round."""
            with torch.no_grad():
                norm = self.normalised_norm()
                rise = float(norm - self.previous_norm)
                self.previous_norm.copy_(norm)
            return rise

        def grow(self, ranks: int, optimizer) -> None:
            """Add a k-row strip and a k-column strip to C (identity on the new
            diagonal block), k rows to A and k zero columns to B."""
            with torch.no_grad():
                old = self.rank
                grow_parameter(self.lora_A, uniform_rows(ranks, self.lora_A.shape[1], self.lora_A), 0, optimizer)
                grow_parameter(self.lora_C, self.lora_C.new_zeros(ranks, old), 0, optimizer)
                column = torch.cat([self.lora_C.new_zeros(old, ranks), torch.eye(ranks, device=self.lora_C.device)])
                grow_parameter(self.lora_C, column, 1, optimizer)
                grow_parameter(self.lora_B, self.lora_B.new_zeros(self.lora_B.shape[0], ranks), 1, optimizer)
                self.blocks += 1
                self.previous_norm.copy_(self.normalised_norm())  # the next rise counts training, not this growth

        def stop_growing(self) -> None:
            self.growing.zero_()

        def lora_factors(self):
            """(B, C·A · alpha/r): the same update as a plain LoRA pair."""
            return self.lora_B, self.lora_C @ self.lora_A * self.scaling

    return TriLinear


def prepare(model, params: TriadaptloraParams, context=None):
    return attach(model, params, context, _layer_class())


def modules_to_grow(curve: str, remaining: int, progress: float) -> int:
    """The paper's count of modules allowed to grow at a round."""
    count = remaining * progress if curve == "linear" else math.exp(progress * math.log(max(1, remaining)))
    return max(1, int(count))


def grow(model, step: int, optimizer) -> list[str]:
    """On a growth round, grow the modules whose score clears this round's
    threshold; the log lines."""
    plan, layers = model.tuning_growth, growing_layers(model)
    if not still_growing(layers):
        return []
    grown = {}
    if plan.due(step):
        scores = {name: layer.score() for name, layer in layers.items()}
        room = plan.budget - ranks_in_use(layers)
        count = modules_to_grow(plan.params.growth_curve, room, plan.progress(step))
        # The threshold is the count-th highest score; exact ties (cores no gradient has reached yet, all
        # alike) would let every module through, so no more than count grow, ties taken in module order.
        grown = share_out(scores, layers, modules=count, room=room, grow_by=plan.params.grow_by)
    return end_round(step, plan, layers, grown, optimizer)


def check(params: TriadaptloraParams, model_config, task: str) -> dict[str, str]:
    return growth_problems(params) or wrapped_problems(prepare, params, model_config, task)
