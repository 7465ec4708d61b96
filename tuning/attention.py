"""Attention over packed rows, one example at a time.

A packed row holds several examples end to end, with ``position_ids``
restarting at 0 for each (``tuning.data.packing``). Plain ``sdpa`` keeps
them apart with a block-diagonal mask over the whole row: it computes
attention for every pair of tokens in the row, (Σn)², and throws most of it
away, and a mask also rules out sdpa's causal kernels and its grouped-query
path. ``segment_attention`` instead runs causal sdpa on each example's own
slice: Σn² work, no mask, no repeated key/value heads. The numbers are the
same (each example sees only itself, causally) while a packed row costs as
much attention as the same examples padded to their own lengths.

Rows whose positions do not restart (generation, padded batches) go to
transformers' own sdpa with its mask, unchanged. It is registered under
the name ``sdpa_segments``; ``use_segment_attention(model)`` switches a
model that uses sdpa over to it.
"""

from __future__ import annotations

NAME = "sdpa_segments"
_last: tuple = (None, None)  # (position_ids, their segments): every layer of one forward passes the same tensor


def _segments(position_ids) -> list[list[tuple[int, int]]] | None:
    """Per row, the (start, end) of each example; None when no row is packed."""
    global _last
    if _last[0] is position_ids:
        return _last[1]
    rows = []
    for row in position_ids.tolist():
        starts = [i for i, position in enumerate(row) if position == 0 or i == 0]
        rows.append(list(zip(starts, starts[1:] + [len(row)])))
    segments = rows if any(len(row) > 1 for row in rows) else None
    _last = (position_ids, segments)
    return segments


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      position_ids=None, **kwargs):
    """An attention function with transformers' interface: (B, H, T, D) in, (B, T, H, D) out."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    same_length = query.shape[2] == key.shape[2] > 1  # not decoding, not prefilling after a cache
    segments = _segments(position_ids) if position_ids is not None and same_length else None
    if segments is None or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)
    grouped = getattr(module, "num_key_value_groups", 1) > 1
    rows = []
    for row, bounds in enumerate(segments):
        pieces = [torch.nn.functional.scaled_dot_product_attention(
            query[row:row + 1, :, start:end], key[row:row + 1, :, start:end], value[row:row + 1, :, start:end],
            dropout_p=dropout, scale=scaling, is_causal=end - start > 1, enable_gqa=grouped)
            for start, end in bounds]
        rows.append(torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0])
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
