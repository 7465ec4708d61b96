"""DELLA-Merging (Deep et al., 2024, arXiv:2406.11617): DARE's random drop,
with keep probabilities that rise with magnitude (MagPrune). In each row of
each task vector the entries are ranked by |value|; the smallest gets keep
probability density − ε, the largest density + ε, the rest evenly in
between, so the row keeps ``density`` of its entries on average, mostly the
large ones. The survivors are rescaled, then merged with TIES' sign
election (della) or summed (della_linear), as mergekit defines the two.

Rescaling: the paper divides each survivor by its own keep probability
(the expected task vector is unchanged, as in DARE); mergekit instead scales
the kept entries so that the tensor keeps its L1 norm (``rescale: l1``).
Random draws are ``torch.bernoulli`` on a generator seeded per tensor name,
row block by row block: the same stream as one call on the whole tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.merge.common import (add_task_vectors_, deltas_, density_setting, normalize_setting, scaling_setting,
                                 seed_setting, sign_setting)
from tuning.merge.stream import seeded_run

RESCALES = ("probability", "l1", "none")
# Rows ranked per call: about this many entries, so that the ranks' int64
# copies stay small for an embedding matrix.
BLOCK_ENTRIES = 1 << 20


@dataclass(frozen=True, kw_only=True)
class DellaLinearParams:
    density: float = density_setting(0.5, "Average fraction of each task-vector row kept (the paper's 1 − p).")
    epsilon: float = setting(0.15, help="ε: keep probabilities run from density − ε (a row's smallest change) to "
                                        "density + ε (its largest); 0 is plain DARE. density ± ε must stay inside "
                                        "(0, 1). mergekit's default is 0.15.", min=0.0, max=0.5, basic=True,
                             label="Spread ε")
    scaling: float = scaling_setting()
    rescale: str = setting("probability", help="How survivors are rescaled: probability divides each by its keep "
                                               "probability (the paper); l1 scales them so the tensor keeps its L1 "
                                               "norm (mergekit's rescale); none keeps them as they are.",
                           choices=RESCALES, label="Rescale")
    seed: int = seed_setting()


@dataclass(frozen=True, kw_only=True)
class DellaParams(DellaLinearParams):
    sign_method: str = sign_setting()
    normalize: bool = normalize_setting(mergekit_default=True)


# sparse: the paper finds MagPrune's edge over DARE largest at high drop rates.
# mergekit: mergekit's rescale and ε, at this table's density.
PRESETS = {
    "balanced": {"density": 0.5, "epsilon": 0.15, "rescale": "probability"},
    "sparse": {"density": 0.3, "epsilon": 0.1, "rescale": "probability"},
    "mergekit": {"density": 0.5, "epsilon": 0.15, "rescale": "l1"},
}


def check(params: DellaLinearParams) -> dict[str, str]:
    if params.density >= 1:
        return {}  # nothing is dropped, ε plays no part
    if params.density == 0:
        return {"density": "a density of 0 drops every change; use a density above 0"}
    if not 0 < params.density - params.epsilon or not params.density + params.epsilon < 1:
        return {"epsilon": f"density ± ε must lie inside (0, 1); with density {params.density:g} and ε "
                           f"{params.epsilon:g} the keep probabilities run from {params.density - params.epsilon:g} "
                           f"to {params.density + params.epsilon:g}"}
    return {}


def keep_probabilities(rows, density: float, epsilon: float):
    """Per entry: density − ε + 2ε · (its rank by |value| in its row) / (row length − 1)."""
    import torch

    if rows.shape[1] == 1:
        return torch.full_like(rows, density)
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(rows.dtype)
    rank_norm = ranks / (rows.shape[1] - 1)
    return (density - epsilon) + rank_norm * 2 * epsilon


def magprune_(delta, density: float, epsilon: float, rescale: str, generator):
    """Drop entries of ``delta`` in place by MagPrune and rescale the rest."""
    import torch

    if density >= 1:
        return delta
    rows = delta.reshape(delta.shape[0], -1) if delta.dim() >= 2 else delta.reshape(1, -1)
    l1_before = float(rows.abs().sum(dtype=torch.float64)) if rescale == "l1" else 0.0
    step = max(1, BLOCK_ENTRIES // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        block = rows[start:start + step]
        probabilities = keep_probabilities(block, density, epsilon)
        keep = torch.bernoulli(probabilities, generator=generator)
        block.mul_(keep.div_(probabilities) if rescale == "probability" else keep)
    if rescale == "l1":
        l1_after = float(rows.abs().sum(dtype=torch.float64))
        if l1_after > 0:
            delta.mul_(l1_before / l1_after)
    return delta


def merge_tensors(base, tensors: list, weights: list[float], params: DellaLinearParams, *, generator=None):
    deltas = [magprune_(delta, params.density, params.epsilon, params.rescale, generator)
              for delta in deltas_(base, tensors)]
    return add_task_vectors_(base, deltas, weights, params, elect=isinstance(params, DellaParams))


run = seeded_run(merge_tensors)
