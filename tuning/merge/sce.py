"""SCE (Wan et al., 2024, arXiv:2408.07990, "FuseChat: Knowledge Fusion of
Chat Models"), per tensor, as mergekit defines it:

- Select: keep only the ``select_topk`` fraction of positions whose task-
  vector entries vary most across the sources (variance over the sources;
  positions where every source agrees carry no conflict worth merging);
- Calculate: one coefficient per source and tensor, its task vector's mean
  squared entry, normalised over the sources (a source that changed this
  matrix more gets more say);
- Erase: drop entries whose sign disagrees with the sign of the sum of the
  task vectors, then average the rest with the coefficients.

θ = θ_base + λ · Σ_i c_i m_i τ_i / Σ_i c_i m_i. Source weights are not used.
mergekit falls back to equal coefficients when the coefficients' sum is
below 1e-6, which a fine-tune's small changes often are (mean square < 1e-6
means changes under ~1e-3); here only an all-zero tensor does, so the
coefficients follow the paper at every scale.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.merge.common import chunks, deltas_, elect_and_average, magnitude_threshold, scaling_setting
from tuning.merge.stream import stream_merge


@dataclass(frozen=True, kw_only=True)
class SceParams:
    select_topk: float = setting(1.0, help="τ: fraction of positions kept, those whose changes vary most across "
                                           "the sources; 1 keeps all (mergekit's default).",
                                 min=0.0, max=1.0, basic=True, label="Select top-k τ")
    scaling: float = scaling_setting()


PRESETS = {"all positions": {"select_topk": 1.0}, "top 10%": {"select_topk": 0.1}}


def check(params: SceParams) -> dict[str, str]:
    if params.select_topk == 0:
        return {"select_topk": "a fraction of 0 selects no position and gives the base model; use one above 0"}
    return {}


def select_by_variance_(deltas: list, fraction: float) -> None:
    """Zero, in every task vector, the positions outside the top ``fraction``
    by variance across the task vectors (of those that vary at all)."""
    import torch

    variance = torch.empty_like(deltas[0])
    for out, *parts in chunks(variance, *deltas):
        torch.var(torch.stack(parts), dim=0, unbiased=False, out=out)
    keep = int(torch.count_nonzero(variance) * fraction)
    if keep == 0:
        for delta in deltas:
            delta.zero_()
        return
    threshold = magnitude_threshold(variance, keep)
    for selected, *parts in chunks(variance, *deltas):
        selected = selected >= threshold
        for part in parts:
            part.mul_(selected)


def coefficients(deltas: list) -> list[float]:
    """Each task vector's mean squared entry, normalised to sum to 1."""
    import torch

    squares = [float(delta.square().sum(dtype=torch.float64)) / delta.numel() for delta in deltas]
    total = sum(squares)
    return [1 / len(deltas)] * len(deltas) if total == 0 else [square / total for square in squares]


def merge_tensors(base, tensors: list, weights: list[float], params: SceParams):
    deltas = deltas_(base, tensors)
    if params.select_topk < 1:
        select_by_variance_(deltas, params.select_topk)
    merged = elect_and_average(deltas, coefficients(deltas), "total", sign_weights=[1.0] * len(deltas))
    return base.add_(merged, alpha=params.scaling)


def run(job) -> dict:
    return stream_merge(job, lambda name, base, tensors: merge_tensors(base, tensors, [], job.params))
