"""Padding-free batches: several examples share a row, each attending only to itself.

A micro-batch holds the same examples as the padded path (``sft.batches``
decides which, from (seed, epoch) alone, so resuming stays exact); only its
layout changes. Two layouts are considered, and the cheaper one is used:

- all the examples end to end in one row (no padding at all; the row is at
  most batch_size × max_length tokens);
- rows of at most ``max_length`` tokens (first-fit decreasing), padded to
  the longest row.

Dense layers cost the same per computed token either way, but attention
over a row costs in proportion to its width (the mask is dense), so one
very wide row can cost more than a few narrower padded ones. The cost of a
layout of R rows of width W is taken as R·W·(1 + W / context_tokens), where
``context_tokens`` is the row width at which a token's attention costs as
much as the rest of the model (about 2·parameters / (4·hidden·layers)).
A batch of one long and three short examples then costs about their total
length, not four times the longest.

Rows can be padded to a multiple of a few tokens (fewer distinct shapes for
the matmul kernels to cache); the padding is a block of its own.

Attention stays within each example because no attention mask is passed
and ``position_ids`` restart at 0 for every example: transformers'
``masking_utils.find_packed_sequence_indices`` turns each restart into a
new block of a block-diagonal causal mask. The model must also be called
with ``use_cache=False``: with a cache object present transformers skips
that detection and the examples would see each other. The first label of
every example is -100 so that no loss is taken for predicting an example's
first token from the end of the previous one (a causal LM never learns the
first token of a row anyway, so the loss is the same as the padded path's).

``packing_works(model)`` runs a six-token probe to confirm that a given
(prepared) model really keeps packed examples apart; the trainer falls
back to padded batches where it does not.
"""

from __future__ import annotations

from tuning.data.sft import IGNORE_INDEX


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into rows whose lengths sum to at most
    ``capacity`` (first-fit decreasing; an item longer than ``capacity`` gets
    a row of its own). Deterministic: ties keep the original order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def plan_rows(lengths: list[int], *, max_length: int, context_tokens: float) -> list[list[int]]:
    """The cheaper layout (see the module docstring): one row, or rows of at most ``max_length``."""
    def cost(rows):
        width = max(sum(lengths[i] for i in row) for row in rows)
        return len(rows) * width * (1 + width / context_tokens)

    return min([list(range(len(lengths)))], pack_rows(lengths, max_length), key=cost)  # a tie: one row


def context_tokens_for(model) -> float:
    """The row width at which attention costs a token as much as the rest of
    ``model``: dense work is 2·N per token, attention 4·hidden·layers per
    token of context (QKᵀ and AV, forward)."""
    config = model.config
    hidden, layers = getattr(config, "hidden_size", 0), getattr(config, "num_hidden_layers", 0)
    if not hidden or not layers:
        return 4096.0  # about a 100M-parameter model's; only weighs the two layouts
    return 2 * sum(p.numel() for p in model.parameters()) / (4 * hidden * layers)


def collate_packed(batch: list, *, max_length: int, pad_token_id: int, context_tokens: float = 4096.0,
                   pad_to_multiple_of: int = 1) -> dict:
    """Tensors input_ids, position_ids and labels (no attention_mask) for a
    batch of ``sft.TokenizedExample``, laid out by ``plan_rows``, rows padded
    to a multiple of ``pad_to_multiple_of`` tokens."""
    import torch

    rows = plan_rows([len(e.input_ids) for e in batch], max_length=max_length, context_tokens=context_tokens)
    ids, positions, labels = [], [], []
    for row in rows:
        row_ids, row_positions, row_labels = [], [], []
        for i in row:
            example = batch[i]
            row_ids += example.input_ids
            row_positions += range(len(example.input_ids))
            row_labels += [IGNORE_INDEX, *example.labels[1:]]  # never predicted across examples
        ids.append(row_ids)
        positions.append(row_positions)
        labels.append(row_labels)
    width = -(-max(len(r) for r in ids) // pad_to_multiple_of) * pad_to_multiple_of
    out = {"input_ids": torch.full((len(rows), width), pad_token_id, dtype=torch.long),
           # Padding continues as a block of its own (positions from 0), so it
           # attends to nothing real and nothing real attends to it.
           "position_ids": torch.arange(width, dtype=torch.long).repeat(len(rows), 1),
           "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)}
    for r, (row_ids, row_positions, row_labels) in enumerate(zip(ids, positions, labels)):
        n = len(row_ids)
        out["input_ids"][r, :n] = torch.tensor(row_ids, dtype=torch.long)
        out["labels"][r, :n] = torch.tensor(row_labels, dtype=torch.long)
        out["position_ids"][r, :n] = torch.tensor(row_positions, dtype=torch.long)
        out["position_ids"][r, n:] = torch.arange(width - n, dtype=torch.long)
    return out


# How far two layouts of the same tokens may differ, as a share of the logits' scale, when the run computes in
# bf16 (autocast, or weights stored in it): bf16 keeps about 3 significant digits, so packed and alone differ
# by about 1e-3 from the order of the sums alone (measured on the tests' tiny llama), where rows that see each
# other differ by about the scale itself.
LOW_PRECISION_SHARE = 2e-2


def layout_tolerance(model, device: str, fp32_share: float) -> float:
    """The share of the logits' scale two layouts of the same tokens may differ by: ``fp32_share``, or
    ``LOW_PRECISION_SHARE`` where the forward runs in bf16 or fp16."""
    import torch

    low = torch.is_autocast_enabled(device) or any(parameter.dtype in (torch.bfloat16, torch.float16)
                                                   for parameter in model.parameters())
    return LOW_PRECISION_SHARE if low else fp32_share


def packing_works(model, device: str) -> bool:
    """Whether ``model`` keeps packed examples apart: the logits of a short
    sequence must be the same alone and packed after another one."""
    import torch

    vocab = model.get_input_embeddings().num_embeddings
    first, second = [(11 * k + 7) % vocab for k in range(4)], [(13 * k + 5) % vocab for k in range(3)]
    was_training = model.training
    model.eval()  # dropout off: the two forward passes must be comparable
    try:
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([second], device=device), use_cache=False).logits.float()
            packed = model(input_ids=torch.tensor([first + second], device=device),
                           position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]], device=device),
                           use_cache=False).logits.float()
    except (TypeError, ValueError, RuntimeError):
        return False  # a model that refuses position_ids or this layout cannot pack
    finally:
        model.train(was_training)
    scale = max(float(alone.abs().max()), 1.0)
    return torch.allclose(packed[:, 4:], alone, rtol=0, atol=layout_tolerance(model, device, 1e-3) * scale)
