"""DARE (Yu et al., 2024, arXiv:2311.03099, "Language Models are Super
Mario"): Drop each task-vector entry at random with probability p and
REscale the survivors by 1/(1−p), which keeps the task vector's expected
value, then merge linearly (dare_linear) or with TIES' sign election
(dare_ties). DAREx-q (Deng et al., 2024, arXiv:2410.09344) showed that at
high drop rates 1/(1−p) over-amplifies the survivors and that a smaller
factor 1/q (q > 1−p) works better: set ``rescale_q`` to use it."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.merge.common import (add_task_vectors_, deltas_, density_setting, normalize_setting, scaling_setting,
                                 seed_setting, sign_setting)
from tuning.merge.stream import seeded_run

DENSITY_HELP = "Fraction 1−p of each task vector's entries kept at random (the paper drops up to 90%: density 0.1)."
Q_HELP = ("DAREx-q: rescale the kept entries by 1/q instead of 1/density; 0 keeps DARE's 1/density. The paper "
          "finds q between the density and 1 works better at low densities (e.g. density 0.01, q 0.05).")


@dataclass(frozen=True, kw_only=True)
class DareParams:
    density: float = density_setting(0.5, DENSITY_HELP)
    scaling: float = scaling_setting()
    rescale_q: float = setting(0.0, help=Q_HELP, min=0.0, max=1.0, label="DAREx-q rescaling q")
    seed: int = seed_setting()


@dataclass(frozen=True, kw_only=True)
class DareTiesParams(DareParams):
    sign_method: str = sign_setting()
    normalize: bool = normalize_setting(mergekit_default=False)


def check(params: DareParams) -> dict[str, str]:
    if params.density == 0:
        return {"density": "a density of 0 drops every change; use a density above 0"}
    if params.rescale_q and params.rescale_q < params.density:
        return {"rescale_q": f"q must be at least the density ({params.density}): a smaller q amplifies the kept "
                             f"entries more than DARE itself"}
    return {}


def drop_and_rescale_(delta, density: float, q: float, generator):
    """Keep each entry with probability ``density``; scale the kept ones by 1/q (1/density when q is 0)."""
    import torch

    if density >= 1 and not q:
        return delta
    keep = torch.rand(delta.shape, generator=generator) < density
    return delta.mul_(keep).div_(q or density)


def merge_tensors(base, tensors: list, weights: list[float], params: DareParams, *, generator=None):
    deltas = [drop_and_rescale_(delta, params.density, params.rescale_q, generator)
              for delta in deltas_(base, tensors)]
    return add_task_vectors_(base, deltas, weights, params, elect=isinstance(params, DareTiesParams))


run = seeded_run(merge_tensors)
