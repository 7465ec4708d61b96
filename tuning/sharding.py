"""Fully sharded training (FSDP2) for a run over several devices, with
PyTorch's own ``torch.distributed.fsdp.fully_shard``.

Under DDP (``tuning.ranks``) every rank holds the whole model, its
gradients and its optimizer state. Under FSDP2 each rank keeps only its
1/N slice of every parameter (a DTensor sharded on dim 0), and so of the
gradients and of AdamW's two moments: a decoder block's weights are
gathered just before its forward and its backward and freed after;
gradients are averaged and scattered back to their owners
(reduce-scatter) in the backward pass. Each decoder block is one unit of
communication, the rest (embeddings, final norm, the head, tied or not)
the root's unit, which stays gathered for the whole step.

The fused head and loss (``tuning.loss``), which runs the decoder and
reads the head outside the model's forward, is made one of the root's
forward methods, so it gathers and scatters as forward does.

Because every forward gathers weights from every rank, all ranks run each
forward together: evaluation and the golden prompts' answers too. At the
end the whole weights are gathered onto rank 0, which writes the output
from a plain copy alone. Checkpoints are sharded
(``tuning.checkpoints.save_sharded_checkpoint``, DCP).

FSDP2 applies to methods that train the model itself; an adapter is
small, every rank holds it whole (DDP).
"""

from __future__ import annotations

from types import MethodType

from tuning.errors import ConfigError
from tuning.loss import fused_next_token_loss

FUSED_LOSS_METHOD = "fused_next_token_loss"  # the name shard_model gives the fused loss on the sharded root


def shards_states(sharding: str, *, devices: int, method) -> bool:
    """Whether a run shards its model: "fsdp", or "auto" for a method that trains the model itself
    (not a 4-bit base), on more than one device."""
    if devices <= 1:
        return False
    return sharding == "fsdp" or (sharding == "auto" and method.produces == "model" and not method.load_kwargs)


def check_sharding(config, method) -> None:
    """Refuse, naming the field, a sharding strategy that does not apply to the run."""
    if config.sharding != "fsdp":
        return
    if config.devices <= 1:
        raise ConfigError({"sharding": f"fully sharded training (fsdp) splits the model across devices; it needs "
                                       f"2 devices or more (this job has {config.devices}): choose auto or ddp"})
    if method.produces != "model" or method.load_kwargs:
        raise ConfigError({"sharding": f"{method.label} trains a small adapter that every device holds whole; fsdp "
                                       f"shards methods that train the model itself: choose auto or ddp"})


def decoder_blocks(model) -> list:
    """The model's repeated blocks, found as transformers' device placement finds them (the classes named
    in ``_no_split_modules``)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [module for module in model.modules() if type(module).__name__ in names and module is not model]


def shard_model(model) -> int:
    """FSDP2 over the process group: each decoder block its own unit, then the root. Returns the
    number of blocks. Every rank must hold the same weights before (``Ranks.broadcast_parameters``):
    each keeps its slice of its own copy."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    blocks = decoder_blocks(model)
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    # The fused loss runs the decoder and reads the output head's weight outside the model's forward, where
    # the root's weights (embeddings, head) would still be slices: as a forward method of the root, FSDP2
    # gathers them before it and sends their gradients back to their owners after the backward pass.
    setattr(model, FUSED_LOSS_METHOD, MethodType(fused_next_token_loss, model))
    register_fsdp_forward_method(model, FUSED_LOSS_METHOD)
    return len(blocks)


def sharded_fused_loss(model, inputs: dict):
    """``tuning.loss.fused_next_token_loss`` for a model ``shard_model`` sharded."""
    return getattr(model, FUSED_LOSS_METHOD)(inputs)


def full_weights(model) -> dict:
    """The sharded model's whole weights on rank 0's CPU (an empty dict on the others); every rank
    must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_copy(model, weights: dict, device: str):
    """A plain (one-process) model of the sharded model's class holding ``weights`` on ``device``:
    what rank 0 evaluates, answers prompts with and saves at the end of the run."""
    from torch.distributed.fsdp import FSDPModule

    plain_class = next(cls for cls in type(model).__mro__[1:] if not issubclass(cls, FSDPModule))
    return plain_class.from_pretrained(None, config=model.config, state_dict=weights).to(device)
