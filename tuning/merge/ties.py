"""TIES-Merging (Yadav et al., 2023, arXiv:2306.01708): TrIm each task
vector to its largest-magnitude entries, Elect a sign per parameter, and
average only the entries that agree with it (disjoint merge), so that
models pulling a parameter in opposite directions do not cancel out."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.merge.common import (deltas_, density_setting, elect_and_average, keep_top_magnitude_, scaling_setting,
                                 sign_setting)
from tuning.merge.stream import stream_merge, weights_of


@dataclass(frozen=True, kw_only=True)
class TiesParams:
    density: float = density_setting(0.2, "Fraction k of each task vector's entries kept, by magnitude (the paper "
                                           "keeps the top 20%).")
    scaling: float = scaling_setting()
    sign_method: str = sign_setting()


def merge_tensors(base, tensors: list, weights: list[float], params: TiesParams):
    deltas = [keep_top_magnitude_(delta, params.density) for delta in deltas_(base, tensors)]
    merged = elect_and_average(deltas, weights, params.sign_method)
    return base.add_(merged, alpha=params.scaling)


def run(job) -> dict:
    weights = weights_of(job)
    return stream_merge(job, lambda name, base, tensors: merge_tensors(base, tensors, weights, job.params))
