"""The next-token loss, computing logits only where a label is.

A causal LM's output head turns every position's hidden state into a
vocabulary-sized row of logits (49,152 floats for SmolLM2), which the loss
then upcasts, log-softmaxes and differentiates. In supervised fine-tuning
the prompt's positions carry no loss, so all of that work and memory is
thrown away there. ``next_token_loss`` asks the model for the logits of
the positions whose next token is a label (``logits_to_keep`` with a
tensor of positions) and takes transformers' own loss over them: the same
mean over labelled tokens, without the unused rows.
"""

from __future__ import annotations

import inspect

from tuning.data.sft import IGNORE_INDEX


def selects_logits(model) -> bool:
    """Whether ``model`` (or the model a peft wrapper holds) accepts ``logits_to_keep``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def next_token_loss(model, inputs: dict):
    """The mean cross-entropy of predicting each labelled token, as
    ``model(**inputs).loss`` computes it for a causal LM."""
    import torch

    labels = inputs["labels"]
    targets = labels[:, 1:]  # position i predicts token i + 1
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # positions needed by any row
    rest = {key: value for key, value in inputs.items() if key != "labels"}
    logits = model(**rest, use_cache=False, logits_to_keep=keep).logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets[:, keep].flatten(),
                                             ignore_index=IGNORE_INDEX)
