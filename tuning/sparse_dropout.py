"""LoRA's input dropout with a random number for each dropped entry, not for each entry.

peft applies ``nn.Dropout(p)`` to the input of every adapted module: one
Bernoulli draw per entry of a (tokens × hidden) tensor, per module, per
step, which on a CPU cost about a tenth of a LoRA step of the bundled model
(``bernoulli_`` in the profile, BENCHMARKS.md) for p = 0.05, where 95% of
those draws change nothing.

``SparseDropout`` draws the same distribution from about p·n numbers: in a
sequence of independent Bernoulli(p) drops the gaps between one drop and
the next are independent and Geometric(p) (on 1, 2, …), so the dropped
positions are the running sums of Geometric(p) gaps. The kept entries are scaled by
1 / (1 − p) as ``nn.Dropout`` scales them. Every entry is dropped with
probability p independently of every other and of the other modules' masks
(each module draws its own), which is the distribution peft's dropout has;
only the random stream differs, so a seeded run is not bit-identical to
one with ``nn.Dropout``. One mask shared by q, k and v (they read the same
input) would be cheaper still, but it correlates the three modules' masks,
which peft's per-module dropout does not: not the same training, so not
done.

Measured and not used by the training loop (2026-12-07): in fp32 on a
2-core AVX2 CPU the dense masks were about 4% of a LoRA step and the sparse
draw gained nothing measurable (BENCHMARKS.md, levers); kept for CPUs where
the masks cost more (10% of a bf16 step). It is a subclass of ``nn.Dropout``
(peft's DoRA path checks for that type) and is meant for a CPU only, where dropout is drawn by the CPU's generator; a
GPU draws a dense mask in a fraction of a step, and the sparse path's
length checks would make it wait for the device.
"""

from __future__ import annotations

import functools
import math

# Above this rate a dense mask is as cheap: p·n draws plus a scatter against
# n draws. Below it the sparse draw does less work.
MAX_SPARSE_P = 0.25
# Below this many entries the sparse draw's fixed cost (seeding, the autograd function: about 0.1-0.3 ms) is more
# than a dense mask's draws (98 × 64 entries: 0.5 ms dense, 1.3 ms sparse on a loaded 2-core machine).
MIN_SPARSE_ENTRIES = 16_384


def dropped_positions(count: int, p: float, *, generator=None):
    """Sorted flat indices in [0, count) as a torch tensor, each present independently with probability ``p``.

    A gap is ⌊E / λ⌋ + 1 with E standard exponential and λ = −log(1 − p): P(gap > k) = e^(−kλ) = (1 − p)^k,
    the Geometric(p) law. numpy draws them (one vectorised call; a chain of small torch ops cost more in
    overhead than the draws), seeded by one number from torch's generator (``generator``, else the global
    one), so ``torch.manual_seed`` and a checkpoint's saved RNG state make a run repeatable."""
    import numpy as np
    import torch

    rng = np.random.default_rng(int(torch.randint(2**63 - 1, (1,), generator=generator)))
    per_unit = -1.0 / math.log1p(-p)  # 1 / λ
    found, end = [], -1.0  # end: the last position drawn so far (it may lie past count)
    while end < count - 1:
        # Enough gaps to pass the end nearly always (6 standard deviations over the mean); the loop draws more
        # where they do not.
        needed = (count - 1 - end) * p
        gaps = rng.standard_exponential(int(needed + 6 * math.sqrt(needed + 1) + 16))
        gaps *= per_unit
        np.floor(gaps, out=gaps)
        gaps += 1.0
        positions = np.cumsum(gaps, out=gaps)  # whole numbers, exact in float64 far beyond any tensor's size
        positions += end
        end = float(positions[-1])
        found.append(positions)
    positions = np.concatenate(found) if len(found) > 1 else found[0]
    return torch.from_numpy(positions[positions < count].astype(np.int64))


@functools.cache
def sparse_dropout_class():
    """The module class (built on first use: this module does not import torch at import time)."""
    import torch

    class DropPositions(torch.autograd.Function):
        """x scaled by ``scale`` with the flat ``positions`` zeroed; the gradient the same way. Only the
        positions are kept for the backward (8 bytes for p·n entries, less than a dense mask's byte each)."""

        @staticmethod
        def forward(ctx, x, positions, scale: float):
            ctx.save_for_backward(positions)
            ctx.scale = scale
            return DropPositions.apply_to(x, positions, scale)

        @staticmethod
        def backward(ctx, grad):
            (positions,) = ctx.saved_tensors
            return DropPositions.apply_to(grad, positions, ctx.scale), None, None

        @staticmethod
        def apply_to(tensor, positions, scale: float):
            out = tensor.contiguous() * scale  # contiguous, so the flat view below writes into it
            out.view(-1).index_fill_(0, positions, 0.0)
            return out

    class SparseDropout(torch.nn.Dropout):
        """``nn.Dropout`` drawn from p·n random numbers (module docstring)."""

        def forward(self, x):
            if not self.training or self.p == 0.0:
                return x
            if x.numel() < MIN_SPARSE_ENTRIES:
                return super().forward(x)  # the same distribution; the sparse draw's fixed cost would dominate
            return DropPositions.apply(x, dropped_positions(x.numel(), self.p), 1.0 / (1.0 - self.p))

    return SparseDropout


def use_sparse_dropout(model) -> int:
    """Replace the ``nn.Dropout`` modules on adapters' inputs (peft's ``lora_dropout``) whose
    rate is at most ``MAX_SPARSE_P`` with ``SparseDropout``; how many were replaced."""
    import torch

    sparse = sparse_dropout_class()
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is torch.nn.Dropout and 0.0 < dropout.p <= MAX_SPARSE_P:
                replacement = sparse(p=dropout.p)
                replacement.train(dropout.training)
                dropouts[name] = replacement
                replaced += 1
    return replaced
