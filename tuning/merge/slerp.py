"""SLERP: spherical linear interpolation between two models (Shoemake, 1985,
"Animating rotation with quaternion curves"), per tensor: it follows the
arc between the two weight vectors instead of the chord, so the merged
weights keep the norm the models have instead of shrinking towards the
middle as a plain average does. Needs no base: t = 0 gives the first
source, t = 1 the second."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuning.fields import setting
from tuning.merge.common import cosine64

# Vectors this close to parallel have an ill-defined arc: interpolate linearly.
PARALLEL = 0.9995


@dataclass(frozen=True, kw_only=True)
class SlerpParams:
    t: float = setting(0.5, help="Position along the arc from the first source (0) to the second (1).", min=0.0,
                       max=1.0, basic=True, label="t")


def slerp(a, b, t: float):
    if t == 0:
        return a
    if t == 1:
        return b
    # In float64: near-parallel weights (cos ~0.999) turn a cosine's rounding
    # error into a much larger error in the angle, and so in every weight.
    cos = cosine64(a, b)
    if abs(cos) > PARALLEL:
        return a.mul_(1 - t).add_(b, alpha=t)
    angle = math.acos(max(-1.0, min(1.0, cos)))
    sin = math.sin(angle)
    return a.mul_(math.sin((1 - t) * angle) / sin).add_(b, alpha=math.sin(t * angle) / sin)


def merge_tensors(base, tensors: list, weights: list[float], params: SlerpParams):
    return slerp(tensors[0], tensors[1], params.t)


def run(job) -> dict:
    from tuning.merge.stream import stream_merge

    return stream_merge(job, lambda name, base, tensors: merge_tensors(base, tensors, [], job.params))
