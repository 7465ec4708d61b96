"""Task arithmetic (Ilharco et al., 2023, arXiv:2212.04089): a fine-tuned
model minus its base is a "task vector"; adding weighted task vectors to
the base combines what the models learned (negative weights subtract it)."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.merge.common import deltas_, scaling_setting, weighted_sum
from tuning.merge.stream import stream_merge, weights_of


@dataclass(frozen=True, kw_only=True)
class TaskArithmeticParams:
    scaling: float = scaling_setting()


def merge_tensors(base, tensors: list, weights: list[float], params: TaskArithmeticParams):
    """θ = θ_base + λ · Σ_i w_i (θ_i − θ_base)."""
    merged = weighted_sum(deltas_(base, tensors), weights)
    return base.add_(merged, alpha=params.scaling)


def run(job) -> dict:
    weights = weights_of(job)
    return stream_merge(job, lambda name, base, tensors: merge_tensors(base, tensors, weights, job.params))
