"""Attention over packed rows, one example at a time.

A packed row holds several examples end to end, with ``position_ids``
restarting at 0 for each (``tuning.data.packing``). Plain ``sdpa`` keeps
them apart with a block-diagonal mask over the whole row: it computes
attention for every pair of tokens in the row, (Σn)², and throws most of it
away, and a mask also rules out sdpa's causal kernels and its grouped-query
path. ``segment_attention`` instead runs causal sdpa on each example's own
slice: Σn² work, no mask, no repeated key/value heads (examples of similar
length share one batched call). The numbers are the
same (each example sees only itself, causally) while a packed row costs as
much attention as the same examples padded to their own lengths.

Rows whose positions do not restart (generation, padded batches) go to
transformers' own sdpa with its mask, unchanged. It is registered under
the name ``sdpa_segments``; ``use_segment_attention(model)`` switches a
model that uses sdpa over to it.
"""

from __future__ import annotations

NAME = "sdpa_segments"
# Segments at least this share of the longest one in a call are padded to it
# and attended in one batched call (small calls cost more than their work on a
# CPU); padding a causal segment at its end changes nothing before it, and
# wastes at most 1/0.8² of the group's attention.
SHARE_OF_CALL = 0.8
_last: tuple = (None, None)  # (position_ids, their plan): every layer of one forward passes the same tensor


def _groups(bounds: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """One row's segments, longest first, in groups of similar length."""
    groups: list[list[tuple[int, int]]] = []
    for start, end in sorted(bounds, key=lambda b: b[0] - b[1]):
        if groups and end - start >= SHARE_OF_CALL * (groups[-1][0][1] - groups[-1][0][0]):
            groups[-1].append((start, end))
        else:
            groups.append([(start, end)])
    return groups


def _plan(position_ids) -> list[list[list[tuple[int, int]]]] | None:
    """Per row, its examples' (start, end) grouped for batched calls; None when no row is packed."""
    global _last
    if _last[0] is position_ids:
        return _last[1]
    rows = []
    for row in position_ids.tolist():
        starts = [i for i, position in enumerate(row) if position == 0 or i == 0]
        rows.append(list(zip(starts, starts[1:] + [len(row)])))
    plan = [_groups(bounds) for bounds in rows] if any(len(bounds) > 1 for bounds in rows) else None
    _last = (position_ids, plan)
    return plan


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      position_ids=None, **kwargs):
    """An attention function with transformers' interface: (B, H, T, D) in, (B, T, H, D) out."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    same_length = query.shape[2] == key.shape[2] > 1  # not decoding, not prefilling after a cache
    plan = _plan(position_ids) if position_ids is not None and same_length else None
    if plan is None or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)
    pad = torch.nn.functional.pad
    options = dict(dropout_p=dropout, scale=scaling, is_causal=True,
                   enable_gqa=getattr(module, "num_key_value_groups", 1) > 1)
    rows = []
    for row, groups in enumerate(plan):
        pieces = {}
        for group in groups:
            width = group[0][1] - group[0][0]

            def stacked(tensor):
                return torch.cat([pad(tensor[row:row + 1, :, start:end], (0, 0, 0, width - (end - start)))
                                  for start, end in group])

            out = torch.nn.functional.scaled_dot_product_attention(stacked(query), stacked(key), stacked(value),
                                                                   **options)
            for i, (start, end) in enumerate(group):
                pieces[start] = out[i:i + 1, :, :end - start]
        ordered = [pieces[start] for start in sorted(pieces)]
        rows.append(torch.cat(ordered, dim=2) if len(ordered) > 1 else ordered[0])
    output = torch.cat(rows, dim=0) if len(rows) > 1 else rows[0]
    return output.transpose(1, 2).contiguous(), None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, segment_attention)
    # The same masks as sdpa, for the rows that fall back to it (padding, generation).
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def use_segment_attention(model) -> bool:
    """Switch ``model`` (or the model a peft wrapper holds) from sdpa to
    segment attention; False where it uses another attention."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    register()
    try:
        base.set_attn_implementation(NAME)
    except (ValueError, NotImplementedError):
        return False  # a model that insists on its own attention
    return True
