"""Model Stock (Jang et al., 2024, arXiv:2403.19522): fine-tuned weights lie
on a thin shell around a centre that generalises better than any of them.
Per layer, the angle θ between the models' task vectors sets how far to
move from the base towards their average:
t = N·cos θ / (1 + (N − 1)·cos θ),  θ_merged = t · mean_i(θ_i) + (1 − t) · θ_base.
With two models this is the paper's t = 2 cos θ / (1 + cos θ)."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.merge.common import cosine64


@dataclass(frozen=True, kw_only=True)
class ModelStockParams:
    pass  # the ratio comes from the geometry alone; the paper has no hyperparameter


def interpolation_ratio(cos: float, n: int) -> float:
    """The paper's t for N models whose task vectors meet at mean angle cos θ.
    A negative cosine (models moving apart) is taken as 0, which keeps the base."""
    cos = min(max(cos, 0.0), 1.0)
    return n * cos / (1 + (n - 1) * cos)


def mean_cosine(deltas: list) -> float:
    """Mean pairwise cosine between task vectors; 1 when a vector is zero
    (an unchanged layer, where every t gives the base). Dots and norms in
    float64, as in SLERP."""
    values = [cosine64(deltas[i], deltas[j]) for i in range(len(deltas)) for j in range(i + 1, len(deltas))]
    return sum(values) / len(values)


def merge_tensors(base, tensors: list, weights: list[float], params: ModelStockParams):
    n = len(tensors)
    deltas = [tensor.sub_(base) for tensor in tensors]
    t = interpolation_ratio(mean_cosine(deltas), n)
    # t · mean(θ_i) + (1 − t) · θ_base  =  θ_base + t · mean(τ_i)
    average = deltas[0]
    for delta in deltas[1:]:
        average.add_(delta)
    return base.add_(average, alpha=t / n)


def run(job) -> dict:
    from tuning.merge.stream import stream_merge

    return stream_merge(job, lambda name, base, tensors: merge_tensors(base, tensors, [], job.params))
