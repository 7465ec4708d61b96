"""PCB-Merging (Du et al., 2024, arXiv:2410.02396, "Parameter Competition
Balancing for Model Merging"). Each entry of each task vector gets an
importance β_i = β_intra,i ⊙ β_inter,i:

- intra-balancing, how much an entry matters within its own task vector:
  exp(N · Norm(τ_i ⊙ τ_i)), N the number of sources;
- inter-balancing, how much it agrees with the other task vectors:
  Σ_j exp(Norm(τ_i ⊙ τ_j)).

Norm scales an array to [0, 1] (min–max over the layer). The paper writes
both terms as a softmax over the layer's entries; a softmax's denominator is
one constant per source and layer, which would re-weight whole sources by
the spread of their other entries, so only the exponentials are used.
Then only the top ``ratio`` of each β_i is kept (Drop), and the task
vectors are averaged with the kept β as weights (Rescale):
θ = θ_base + λ · Σ_i β_i τ_i / Σ_i β_i. Source weights are not used.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.merge.common import deltas_, keep_top_magnitude_, scaling_setting
from tuning.merge.stream import stream_merge


@dataclass(frozen=True, kw_only=True)
class PcbParams:
    ratio: float = setting(0.1, help="Fraction r of each task vector's entries kept, by importance (the paper "
                                     "uses 0.05–0.2).", min=0.0, max=1.0, basic=True, label="Kept ratio")
    scaling: float = scaling_setting()


def check(params: PcbParams) -> dict[str, str]:
    return {"ratio": "a ratio of 0 drops every change; use a ratio above 0"} if params.ratio == 0 else {}


def _norm(x):
    """Min–max scale to [0, 1] in place (all zeros when x is constant)."""
    low, high = x.min(), x.max()
    return x.sub_(low).div_(high - low) if high > low else x.zero_()


def importance(deltas: list) -> list:
    """β_i = β_intra,i ⊙ β_inter,i for every task vector (see the module docstring)."""
    n = len(deltas)
    betas = []
    for delta in deltas:
        beta = _norm(delta * delta).mul_(n).exp_()  # intra
        inter = None
        for other in deltas:
            term = _norm(delta * other).exp_()
            inter = term if inter is None else inter.add_(term)
        betas.append(beta.mul_(inter))
    return betas


def merge_tensors(base, tensors: list, weights: list[float], params: PcbParams):
    import torch

    deltas = deltas_(base, tensors)
    betas = [keep_top_magnitude_(beta, params.ratio) for beta in importance(deltas)]  # β > 0: magnitude is value
    numerator = torch.zeros_like(base)
    denominator = torch.zeros_like(base)
    for delta, beta in zip(deltas, betas):
        numerator.addcmul_(delta, beta)
        denominator.add_(beta)
    merged = numerator.div_(torch.where(denominator == 0, torch.ones_like(denominator), denominator))
    return base.add_(merged, alpha=params.scaling)


def run(job) -> dict:
    return stream_merge(job, lambda name, base, tensors: merge_tensors(base, tensors, [], job.params))
