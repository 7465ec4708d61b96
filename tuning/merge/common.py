"""Settings and tensor steps the whole-model merge methods share.

Every function takes fp32 tensors of one parameter (the base and one per
source) and may modify the source tensors it is given in place: the merge
loop reads fresh copies for every tensor, and working in place keeps the
memory of a large tensor's merge to a few copies of it.
"""

from __future__ import annotations

import math
import zlib

from tuning.fields import setting


def scaling_setting(default: float = 1.0):
    return setting(default, help="λ: how much of the merged task vector is added to the base (1 adds all of it; "
                                 "the papers tune it on validation data, often 0.3–1).", min=0.0, max=10.0,
                   basic=True, label="Scaling λ")


def density_setting(default: float, help: str):
    return setting(default, help=help, min=0.0, max=1.0, basic=True, label="Density")


def seed_setting():
    return setting(0, help="Random seed for the dropped entries (same seed, same merge).", min=0, max=2**31 - 1)


def sign_setting():
    return setting("total", help="How the sign of each parameter is elected: total (the sign of the weighted sum of "
                                 "the task vectors, as in TIES) or frequency (the sign most task vectors have).",
                   choices=("total", "frequency"), label="Sign election")


def deltas_(base, tensors: list) -> list:
    """Task vectors τ_i = θ_i − θ_base, computed in place in the source tensors."""
    return [tensor.sub_(base) for tensor in tensors]


def weighted_sum(tensors: list, weights: list[float]):
    total = tensors[0] * weights[0]
    for tensor, weight in zip(tensors[1:], weights[1:]):
        total.add_(tensor, alpha=weight)
    return total


# Elementwise steps run over slices of this many entries, so a large tensor
# (an embedding matrix) needs only small temporaries beside its own copies.
CHUNK = 1 << 20
# Up to this size torch.kthvalue finds a threshold directly; it needs about
# four copies of the tensor, too much for an embedding matrix.
KTHVALUE_LIMIT = 1 << 22


def chunks(*tensors):
    """Aligned flat slices of same-shaped contiguous tensors (views: writes go through)."""
    flats = [t.view(-1) for t in tensors]
    for start in range(0, flats[0].numel(), CHUNK):
        yield [flat[start:start + CHUNK] for flat in flats]


# Float64 slices this long: large enough that each dot product is one
# efficient call, small enough that the float64 copies stay a few MiB.
DOT_CHUNK = 1 << 18


def cosine64(a, b, *, zero: float = 1.0) -> float:
    """cos(a, b) with the dot products and norms accumulated in float64,
    slice by slice; ``zero`` when either tensor is zero. An fp32 dot of a
    large tensor loses digits that matter where a cosine near 1 becomes an
    angle (SLERP, Model Stock): on a 28M-entry embedding it gave a 6e-4
    relative error in the merged tensor, against mergekit's 5e-6."""
    import torch

    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    size = min(DOT_CHUNK, flat_a.numel())
    buffer_a, buffer_b = torch.empty(size, dtype=torch.float64), torch.empty(size, dtype=torch.float64)
    ab = aa = bb = 0.0
    for start in range(0, flat_a.numel(), size):
        part_a, part_b = flat_a[start:start + size], flat_b[start:start + size]
        x, y = buffer_a[:part_a.numel()].copy_(part_a), buffer_b[:part_b.numel()].copy_(part_b)
        ab += float(x.dot(y))
        aa += float(x.dot(x))
        bb += float(y.dot(y))
    norms = math.sqrt(aa * bb)
    return zero if norms == 0 else ab / norms


def magnitude_threshold(values, keep: int) -> float:
    """The keep-th largest |value|: the entries with |value| ≥ it are the top ``keep``
    (ties at the threshold may add a few)."""
    import torch

    count = values.numel()
    if count <= KTHVALUE_LIMIT:
        return float(torch.kthvalue(values.abs().reshape(-1), count - keep + 1).values)
    # Non-negative floats order like their bit patterns read as integers: find
    # the pattern's high 16 bits, then its low 16 bits, with one histogram pass each.
    high_counts = torch.zeros(1 << 16, dtype=torch.int64)
    for (part,) in chunks(values):
        high_counts += torch.bincount(part.abs().view(torch.int32) >> 16, minlength=1 << 16)
    high, keep = _select_bin(high_counts, keep)
    low_counts = torch.zeros(1 << 16, dtype=torch.int64)
    for (part,) in chunks(values):
        bits = part.abs().view(torch.int32)
        low_counts += torch.bincount(bits[(bits >> 16) == high] & 0xFFFF, minlength=1 << 16)
    low, _ = _select_bin(low_counts, keep)
    return float(torch.tensor([(high << 16) | low], dtype=torch.int32).view(torch.float32))


def _select_bin(counts, keep: int) -> tuple[int, int]:
    """The highest bin b with at least ``keep`` entries in bins ≥ b, and how
    many of the ``keep`` are left to find inside b."""
    import torch

    at_or_above = counts.flip(0).cumsum(0).flip(0)
    chosen = int(torch.nonzero(at_or_above >= keep).max())
    above = int(at_or_above[chosen + 1]) if chosen + 1 < len(counts) else 0
    return chosen, keep - above


def keep_top_magnitude_(delta, density: float):
    """Zero all but the ``density`` fraction of entries with the largest |value| (in place)."""
    keep = int(round(density * delta.numel()))
    if keep >= delta.numel():
        return delta
    if keep <= 0:
        return delta.zero_()
    threshold = magnitude_threshold(delta, keep)
    for (part,) in chunks(delta):
        part.mul_(part.abs() >= threshold)
    return delta


def normalize_setting(mergekit_default: bool):
    mergekit = "on" if mergekit_default else "off"
    return setting(True, help="Divide the agreeing changes by the sum of their sources' weights (TIES' disjoint "
                              "mean, as in the papers). Off adds them up instead, so that weights summing to more "
                              f"than 1 amplify the change; mergekit's default for this method is {mergekit}.",
                   label="Normalise")


def elect_and_average(deltas: list, weights: list[float], sign_method: str = "total", normalize: bool = True,
                      sign_weights: list[float] | None = None):
    """TIES' "elect" and "disjoint merge" steps: per parameter, elect a sign,
    then average the entries of that sign (weighted by the source weights);
    zero entries and entries of the other sign take no part. Without
    ``normalize`` the agreeing entries are summed (weighted), not averaged.
    ``sign_weights`` (default: ``weights``) weigh the "total" election.
    The result is written into ``deltas[0]``."""
    import torch

    for parts in chunks(*deltas):
        if sign_method == "total":
            # Each product rounded before the sum (no fused multiply-add), so that two
            # changes that cancel exactly give 0 and elect +, as mergekit's sum does.
            votes = [part * weight for part, weight in zip(parts, sign_weights or weights)]
            positive = weighted_sum(votes, [1.0] * len(votes)) >= 0
        else:
            positive = weighted_sum([torch.sign(p) for p in parts], [1.0] * len(parts)) >= 0
        numerator = torch.zeros_like(parts[0])
        denominator = torch.zeros_like(parts[0])
        for part, weight in zip(parts, weights):
            agrees = torch.where(positive, part > 0, part < 0)
            numerator.add_(part * agrees, alpha=weight)
            denominator.add_(agrees.to(part.dtype), alpha=weight)
        if normalize:
            # Where no source agrees the merged task vector is 0 (the base value is kept).
            denominator[denominator == 0] = 1.0
            numerator.div_(denominator)
        parts[0].copy_(numerator)
    return deltas[0]


def add_task_vectors_(base, deltas: list, weights: list[float], params, *, elect: bool):
    """θ_base + λ · (the deltas' TIES merge when ``elect``, else their weighted sum);
    ``params`` carries scaling (and sign_method, normalize to elect)."""
    if elect:
        merged = elect_and_average(deltas, weights, params.sign_method, params.normalize)
    else:
        merged = weighted_sum(deltas, weights)
    return base.add_(merged, alpha=params.scaling)


def tensor_generator(seed: int, name: str):
    """A random generator for one tensor that depends only on the seed and
    the tensor's name, so a merge is reproducible whatever order it runs in."""
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))

