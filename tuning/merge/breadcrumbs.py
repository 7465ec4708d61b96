"""Model Breadcrumbs (Davari & Belilovsky, 2024, arXiv:2312.06795): in each
layer of each task vector, mask out the largest-magnitude entries
(outliers that move the model far from its base) and the smallest (noise),
keep the "breadcrumbs" in between, and add them to the base like task
arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.merge.common import deltas_, density_setting, scaling_setting, weighted_sum
from tuning.merge.stream import stream_merge, weights_of


@dataclass(frozen=True, kw_only=True)
class BreadcrumbsParams:
    density: float = density_setting(0.9, "Fraction of each layer's task-vector entries kept (the paper drops "
                                           "the smallest ~10%).")
    gamma: float = setting(0.01, help="Fraction of each layer's largest-magnitude entries dropped as outliers "
                                      "(the paper's top β, about 1%).", min=0.0, max=1.0, basic=True,
                          label="Outliers γ")
    scaling: float = scaling_setting()


def check(params: BreadcrumbsParams) -> dict[str, str]:
    if params.density + params.gamma > 1:
        return {"gamma": f"density + gamma must be at most 1 (now {params.density + params.gamma:g}): together they "
                         f"are the kept and the dropped-as-outlier fractions"}
    return {}


def breadcrumb_mask(delta, density: float, gamma: float):
    """True for the entries ranked (by |value|, ascending) in the window
    between the dropped smallest 1 − density − gamma and the dropped largest gamma."""
    import torch

    count = delta.numel()
    drop_top = int(round(gamma * count))
    keep = min(int(round(density * count)), count - drop_top)
    if keep <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    order = delta.abs().reshape(-1).argsort()
    mask = torch.zeros(count, dtype=torch.bool)
    end = count - drop_top
    mask[order[end - keep:end]] = True
    return mask.reshape(delta.shape)


def merge_tensors(base, tensors: list, weights: list[float], params: BreadcrumbsParams):
    deltas = [delta.mul_(breadcrumb_mask(delta, params.density, params.gamma)) for delta in deltas_(base, tensors)]
    return base.add_(weighted_sum(deltas, weights), alpha=params.scaling)


def run(job) -> dict:
    weights = weights_of(job)
    return stream_merge(job, lambda name, base, tensors: merge_tensors(base, tensors, weights, job.params))
