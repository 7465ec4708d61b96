"""The next-token loss, without a vocabulary-sized tensor for the whole batch.

A causal LM's output head turns every position's hidden state into a row
of logits as wide as the vocabulary (49,152 floats for SmolLM2), which the
loss then upcasts, log-softmaxes and differentiates: for a 2,000-token
batch that is several 400 MB tensors, more memory than all the layers'
activations, and passes over memory that cost as much time as the head's
matmul. Two remedies, each giving the loss ``model(**inputs).loss`` gives:

- ``next_token_loss``: logits only for the positions whose next token is
  a label (``logits_to_keep``); the prompt's positions carry no loss in
  supervised fine-tuning.
- ``fused_next_token_loss``: the head and the cross-entropy together, a
  chunk of tokens at a time, with the gradient with respect to the hidden
  states (and the head's weight, where it trains) computed in the same
  pass. Only one chunk of logits ever exists; the forward matmul and the
  backward ones are the same as the plain path's, so nothing is recomputed
  (the technique of Liger Kernel's fused linear cross-entropy and of Cut
  Cross-Entropy, Wijmans et al. 2024). ``fused_loss_works(model)`` checks
  it against the model's own loss, since some architectures scale or cap
  their logits in the head.
"""

from __future__ import annotations

import functools
import inspect

from tuning.data.sft import IGNORE_INDEX

CHUNK_TOKENS = 128  # on a CPU: 128 × 49,152 fp32 logits = 25 MB at a time
GPU_CHUNK_TOKENS = 1024  # on a GPU larger matmuls pay (200 MB for SmolLM2's vocabulary)


def _unwrapped(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def task_model(model):
    """The module whose forward with labels gives the task's own loss. An
    adapter that injects its layers (every peft method but the prompt ones)
    lives inside the transformers model peft wraps, and that model's loss is
    the task's; peft's AdaLoRA wrapper adds its orthogonality penalty on top,
    which is not the task's loss (see ``Method.penalty``). Prompt methods'
    wrappers insert their virtual tokens, so they are called themselves."""
    config = getattr(model, "active_peft_config", None)
    return model.get_base_model() if config is not None and not config.is_prompt_learning else model


def selects_logits(model) -> bool:
    """Whether ``model`` (or the model a peft wrapper holds) accepts ``logits_to_keep``."""
    return "logits_to_keep" in inspect.signature(_unwrapped(model).forward).parameters


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


@functools.cache
def _linear_cross_entropy():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """mean over rows of cross_entropy(hidden @ weightᵀ, targets); the
        gradients are computed chunk by chunk in the forward and kept."""

        @staticmethod
        def forward(ctx, hidden, weight, targets, compute_dtype):
            h, w = hidden.to(compute_dtype), weight.to(compute_dtype)  # the head cast once, not per chunk
            count = targets.numel()
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_hidden = torch.empty_like(hidden)
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
            size = CHUNK_TOKENS if hidden.device.type == "cpu" else GPU_CHUNK_TOKENS
            for start in range(0, count, size):
                h_chunk, t_chunk = h[start:start + size], targets[start:start + size]
                logits = (h_chunk @ w.T).float()
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, t_chunk[:, None]).squeeze(1)).sum()
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                grad[torch.arange(len(t_chunk), device=grad.device), t_chunk] -= 1
                grad = grad.div_(count).to(compute_dtype)
                grad_hidden[start:start + size] = grad @ w
                if grad_weight is not None:
                    grad_weight += (grad.T @ h_chunk).float()
            ctx.save_for_backward(grad_hidden, grad_weight)
            ctx.weight_dtype = weight.dtype
            return total / count

        @staticmethod
        def backward(ctx, grad_output):
            grad_hidden, grad_weight = ctx.saved_tensors
            return (grad_hidden * grad_output,
                    None if grad_weight is None else (grad_weight * grad_output).to(ctx.weight_dtype),
                    None, None)

    return LinearCrossEntropy


def _head(model):
    """The output head, where it is a plain linear layer without a bias."""
    import torch

    head = _unwrapped(model).get_output_embeddings()
    return head if type(head) is torch.nn.Linear and head.bias is None else None


def fused_next_token_loss(model, inputs: dict):
    """``next_token_loss`` computed by the decoder, then the head and the
    loss a chunk of tokens at a time (see the module docstring)."""
    import torch

    base = _unwrapped(model)
    rest = {key: value for key, value in inputs.items() if key != "labels"}
    hidden = base.get_decoder()(**rest, use_cache=False).last_hidden_state
    targets = inputs["labels"][:, 1:]
    labelled = targets != IGNORE_INDEX
    device = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    weight = _head(model).weight
    return _linear_cross_entropy().apply(hidden[:, :-1][labelled], weight, targets[labelled], compute_dtype)


def fused_loss_works(model, device: str) -> bool:
    """Whether the fused loss gives ``model``'s own loss on a short probe
    (a head that scales, caps or biases its logits fails this)."""
    import torch

    if _head(model) is None or not hasattr(_unwrapped(model), "get_decoder"):
        return False
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.tensor([[(17 * k + 3) % vocab for k in range(6)]], device=device)
    inputs = {"input_ids": ids, "labels": torch.cat([torch.full_like(ids[:, :2], IGNORE_INDEX), ids[:, 2:]], 1)}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = float(task_model(model)(**inputs, use_cache=False).loss)
            fused = float(fused_next_token_loss(model, inputs))
    except (TypeError, ValueError, RuntimeError, AttributeError):
        return False
    finally:
        model.train(was_training)
    return abs(fused - expected) <= 1e-3 * max(abs(expected), 1.0)
