"""Preference pairs laid out without padding, the prompt computed once.

A pair's chosen and rejected sequences begin with the same tokens (the
prompt rendered through the chat template, and any opening tokens the two
replies share). A causal model's hidden state at a position depends only on
the tokens up to it, so those shared tokens have the same hidden states in
both sequences: they can be computed once. Each pair becomes one block

    [shared prefix | the chosen reply's own tokens | the rejected reply's own tokens]

with position ids counting each sequence as it would alone (the rejected
reply's own tokens continue from the end of the prefix, not of the chosen
reply) and a mask that lets every token see the prefix and the earlier
tokens of its own sequence, never the other reply. The numbers are those of
scoring the two sequences apart, with the prefix's work done once and no
padding: the logits needed are only those predicting a labelled token,
gathered by ``score_*`` indices (the prefix's last position predicts the first
reply token of both sequences).

Blocks are laid end to end in rows by ``packing.plan_rows`` (one row, or
rows no wider than the widest block, whichever costs less; a mask is dense,
so a very wide row costs more attention than it saves in padding) and masked
block-diagonally. A row's padding sees only itself.

The tensors: ``input_ids``, ``position_ids`` (rows, width), ``attention_mask``
(rows, 1, width, width; True where a query may attend), and for every
labelled token ``score_rows``, ``score_from`` (the position whose hidden
state predicts it), ``score_targets`` (the token) and ``score_sequence``
(which sequence: chosen replies 0…pairs-1, then the rejected ones, as
``preference.collate_pairs`` orders rows); ``ref_logps`` where the pairs carry
them.
"""

from __future__ import annotations

from tuning.data.packing import plan_rows
from tuning.data.sft import IGNORE_INDEX


def shared_prefix_length(chosen: list[int], rejected: list[int]) -> int:
    """How many opening tokens the two sequences share, leaving each at least its last token."""
    limit = min(len(chosen), len(rejected)) - 1
    n = 0
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    return n


def _block(example) -> tuple[list[int], list[int], list[tuple[int, int, int, int]], tuple[int, int]]:
    """One pair's (token ids, position ids, labelled targets as (side, from, token) with side 0 chosen and
    1 rejected, (shared length, chosen length)), positions relative to the block's start."""
    chosen, rejected = example.chosen, example.rejected
    shared = shared_prefix_length(chosen.input_ids, rejected.input_ids)
    ids = chosen.input_ids + rejected.input_ids[shared:]
    positions = list(range(len(chosen.input_ids))) + list(range(shared, len(rejected.input_ids)))
    own_start = {0: 0, 1: len(chosen.input_ids) - shared}  # where a side's own tokens sit after the prefix

    def place(side: int, t: int) -> int:
        return t if t < shared else shared + own_start[side] + (t - shared)

    targets = [(side, place(side, t - 1), token)
               for side, sequence in enumerate((chosen, rejected))
               for t, (token, label) in enumerate(zip(sequence.input_ids, sequence.labels))
               if t and label != IGNORE_INDEX]
    return ids, positions, targets, (shared, len(chosen.input_ids))


def collate_pairs_shared(batch: list, *, pad_token_id: int, context_tokens: float = 4096.0,
                         pad_to_multiple_of: int = 1) -> dict:
    """The pairs of ``batch`` (``preference.PreferenceExample``) as shared-prefix blocks packed in rows."""
    import torch

    blocks = [_block(example) for example in batch]
    lengths = [len(ids) for ids, _, _, _ in blocks]
    rows = plan_rows(lengths, max_length=max(lengths), context_tokens=context_tokens)
    width = -(-max(sum(lengths[i] for i in row) for row in rows) // pad_to_multiple_of) * pad_to_multiple_of
    pairs = len(batch)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    position_ids = torch.arange(width, dtype=torch.long).repeat(len(rows), 1)
    mask = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1, 1)  # padding sees only itself
    score: list[tuple[int, int, int, int]] = []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            ids, positions, targets, (shared, chosen_length) = blocks[i]
            end = start + len(ids)
            input_ids[r, start:end] = torch.tensor(ids, dtype=torch.long)
            position_ids[r, start:end] = torch.tensor(positions, dtype=torch.long)
            mask[r, 0, start:end, start:end] = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
            # the rejected reply's own tokens do not see the chosen reply's own tokens
            mask[r, 0, start + chosen_length:end, start + shared:start + chosen_length] = False
            score += [(r, start + source, token, i + side * pairs) for side, source, token in targets]
            start = end
    rows_, sources, tokens, sequences = (torch.tensor(column, dtype=torch.long) for column in zip(*score))
    out = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask, "score_rows": rows_,
           "score_from": sources, "score_targets": tokens, "score_sequence": sequences}
    if all(e.ref_logps is not None for e in batch):
        out["ref_logps"] = torch.tensor([e.ref_logps[0] for e in batch] + [e.ref_logps[1] for e in batch],
                                        dtype=torch.float32)
    return out
