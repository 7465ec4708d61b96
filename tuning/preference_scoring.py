"""Each sequence's log-probability of its labelled tokens, the quantity
every preference loss is built from, from either batch layout:

- padded rows (``tuning.data.preference.collate_pairs``: chosen rows, then
  rejected rows), as TRL's trainers lay a batch out: ``token_logps`` gives
  every position's log-probability, which ORPO's supervised term needs;
- shared-prefix blocks (``tuning.data.preference_packing``): no padding, the
  prompt computed once per pair, and the output head applied only where a
  label is. ``sequence_logps`` reads either and returns the per-sequence sums.

``shared_layout_works(model)`` checks, once per run, that a (prepared) model
scores the same numbers both ways; the loop falls back to padded rows where
it does not (an attention that ignores a given mask, a head that scales its
logits).
"""

from __future__ import annotations

import contextlib

from tuning.data.packing import layout_tolerance
from tuning.data.sft import IGNORE_INDEX

SHARED = "score_sequence"  # the key that marks a shared-prefix batch


def token_logps(model, inputs: dict):
    """(log-probability of every next token, (rows, length - 1); which of
    them are labelled). A padded position scores 0 where it is not labelled."""
    from trl.trainer.utils import selective_log_softmax

    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
    labelled = inputs["labels"][:, 1:] != IGNORE_INDEX
    # In fp32: a sequence's log-probability sums hundreds of tokens' terms, which bf16 logits would blur.
    return selective_log_softmax(logits[:, :-1].float(), inputs["input_ids"][:, 1:]), labelled


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def shared_logps(model, inputs: dict):
    """(summed log-probability of each sequence's labelled tokens, their counts) for a shared-prefix
    batch: the decoder over the blocks, then the output head only at the positions that predict a label."""
    import torch
    from trl.trainer.utils import selective_log_softmax

    lm = _causal_lm(model)
    hidden = lm.base_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                           position_ids=inputs["position_ids"], use_cache=False).last_hidden_state
    logits = lm.get_output_embeddings()(hidden[inputs["score_rows"], inputs["score_from"]])
    logps = selective_log_softmax(logits.float(), inputs["score_targets"])
    sequence = inputs["score_sequence"]
    counts = torch.bincount(sequence)
    return torch.zeros(counts.shape, dtype=logps.dtype, device=logps.device).index_add(0, sequence, logps), counts


def sequence_logps(model, inputs: dict):
    """(summed log-probability of each sequence's labelled tokens, their counts), chosen sequences first."""
    if SHARED in inputs:
        return shared_logps(model, inputs)
    logps, labelled = token_logps(model, inputs)
    return (logps * labelled).sum(dim=1), labelled.sum(dim=1)


def reference_logps(model, inputs: dict, *, reference=None):
    """Each row's summed log-probability of its labelled tokens under the
    reference: ``reference`` (a frozen copy) where given, else ``model`` with
    its adapter switched off."""
    import torch

    # Without an adapter to switch off (a full fine-tune scoring before its first step) the model is the base.
    adapter = reference is None and hasattr(model, "disable_adapter")
    off = model.disable_adapter() if adapter else contextlib.nullcontext()
    with torch.no_grad(), off:
        return sequence_logps(reference if reference is not None else model, inputs)[0]


def shared_layout_works(model, device: str) -> bool:
    """Whether ``model`` scores two made-up pairs (a shared prompt, replies of different lengths, one
    sharing its first token) the same in shared-prefix blocks as in padded rows."""
    import torch

    from tuning.data.preference import PreferenceExample, collate_pairs
    from tuning.data.preference_packing import collate_pairs_shared
    from tuning.data.sft import TokenizedExample

    vocab = _causal_lm(model).get_input_embeddings().num_embeddings

    def side(prompt: list[int], reply: list[int]) -> TokenizedExample:
        ids = [t % vocab for t in prompt + reply]
        return TokenizedExample(ids, [IGNORE_INDEX] * len(prompt) + ids[len(prompt):])

    pairs = [PreferenceExample(side([3, 5, 7, 9], [11, 13, 15]), side([3, 5, 7, 9], [17, 19])),
             PreferenceExample(side([21, 23], [25, 27]), side([21, 23], [25, 29, 31, 33]))]
    was_training = model.training
    model.eval()  # dropout off: the two layouts must be comparable
    try:
        with torch.no_grad():
            padded = sequence_logps(model, {k: v.to(device) for k, v in collate_pairs(pairs, pad_token_id=0).items()})
            shared = sequence_logps(model, {k: v.to(device) for k, v in
                                            collate_pairs_shared(pairs, pad_token_id=0).items()})
    except (TypeError, ValueError, RuntimeError, AttributeError, IndexError):
        return False  # a model that refuses a 4D mask or position ids, or has no plain decoder and head
    finally:
        model.train(was_training)
    scale = max(float(padded[0].abs().max()), 1.0)
    return (torch.equal(padded[1], shared[1])
            and torch.allclose(padded[0].float(), shared[0].float(), rtol=0,
                               atol=layout_tolerance(model, device, 2e-3) * scale))
