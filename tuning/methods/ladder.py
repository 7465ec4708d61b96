"""Ladder Side-Tuning (Sung et al., 2022, "LST: Ladder Side-Tuning for
Parameter and Memory Efficient Transfer Learning", arXiv:2206.06522).

The backbone stays frozen and runs under ``torch.no_grad()``: none of its
activations is kept for backward, which is where most of a fine-tune's
memory goes. Beside it runs a small side network of width d/r (r the
reduction factor), one side block per backbone block, fed through "ladder"
connections: the backbone's embeddings and each block's output are
down-projected to the side width, and before side block i a learned gate
mixes the ladder input with the side network's own state,

    x_i = μ_i · down_i(h_i) + (1 − μ_i) · s_{i−1},   μ_i = σ(α_i / T),

as in the paper (T = 0.1, α_i starting at 0 so μ_i = ½). The side
network's last state is up-projected to d and added to the backbone's final
hidden state, which the frozen output (or classification) head reads; the up
projection starts at zero, so training starts from the base model. Only the
side network (and a classifier's new head) trains, and the gradient reaches
it through the head alone.

A side block is a pre-norm transformer block of the side width: causal
self-attention (heads of the backbone's head size, at least one) and an MLP
with the backbone's expansion ratio. It has no position encoding of its own:
every ladder input already carries the backbone's. The paper initialises the
side blocks from a pruned copy of the backbone; here they start at random
(the up projection at zero keeps the start equal to the base).

Generation works with the backbone's KV cache: the side blocks keep their
own keys and values on the same cache object, so the playground and GRPO
decode one token at a time. Rows are never packed (the side attention masks
padding, not packed segments). The output is the side network's tensors and
``ladder_side_network.json`` (``tuning.methods.saved_tensors``), which
``tuning.loading.load_artifact`` puts back on the base; a side network
cannot fold into the base weights.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tuning.errors import ConfigError
from tuning.fields import config_to_dict, setting
from tuning.methods.base import CLASSIFIER_TASKS
from tuning.methods.blocks import blocks_problems, head_parameters, train_only, transformer_blocks
from tuning.methods.common import meta_model, presets
from tuning.methods.memory import model_dims
from tuning.methods.saved_tensors import attach_trained, export_trained

CONFIG_FILE = "ladder_side_network.json"  # what marks an output directory as a side network
CACHE_ATTRIBUTE = "ladder_side_cache"  # the side blocks' keys and values, kept on the backbone's cache object


@dataclass(frozen=True, kw_only=True)
class LadderParams:
    reduction_factor: int = setting(8, min=2, max=4096, basic=True, label="Reduction factor",
                                    help="Backbone hidden size ÷ side network width (the paper's r; 8 gives a "
                                         "72-wide side network on a 576-wide model).")
    gate_temperature: float = setting(0.1, min=0.001, max=100.0, label="Gate temperature",
                                      help="T in the ladder gates μ = σ(α / T) that mix each down-projected backbone "
                                           "state with the side network's own (the paper uses 0.1).")


PRESETS = presets(quick=(0.003, {}), balanced=(0.002, {}), thorough=(0.001, {"reduction_factor": 4}))


def side_shape(params: LadderParams, model_config) -> tuple[int, int]:
    """(width, attention heads) of the side network on a model of this config."""
    hidden, _, heads, _ = model_dims(model_config)
    width = hidden // params.reduction_factor
    if width < 1:
        raise ConfigError({"reduction_factor": f"{params.reduction_factor} leaves no side width: the hidden size is "
                                               f"{hidden}"})
    most = max(1, width // max(1, hidden // heads))  # heads of the backbone's head size, at least one
    return width, max(h for h in range(1, most + 1) if width % h == 0)


def side_network_shape(params: LadderParams, model_config) -> tuple[int, int]:
    """The memory estimate's hook: what the side network keeps for backward
    is that of a transformer this wide with this many heads."""
    return side_shape(params, model_config)


def _ffn_ratio(model_config) -> float:
    text = getattr(model_config, "text_config", None) or model_config
    hidden = model_dims(model_config)[0]
    return (getattr(text, "intermediate_size", None) or 4 * hidden) / hidden


@functools.cache
def _side_network_class():
    import torch
    from torch import nn
    from torch.nn import functional

    class SideBlock(nn.Module):
        def __init__(self, width: int, heads: int, ffn: int, device, dtype):
            super().__init__()
            self.heads = heads
            self.attention_norm = nn.LayerNorm(width, device=device, dtype=dtype)
            self.qkv = nn.Linear(width, 3 * width, device=device, dtype=dtype)
            self.attention_out = nn.Linear(width, width, device=device, dtype=dtype)
            self.ffn_norm = nn.LayerNorm(width, device=device, dtype=dtype)
            self.ffn_up = nn.Linear(width, ffn, device=device, dtype=dtype)
            self.ffn_down = nn.Linear(ffn, width, device=device, dtype=dtype)

        def forward(self, x, mask, cached):
            rows, length, width = x.shape
            qkv = self.qkv(self.attention_norm(x)).view(rows, length, 3, self.heads, width // self.heads)
            query, key, value = qkv.permute(2, 0, 3, 1, 4)
            if cached is not None:  # the keys and values of the positions decoded before
                key, value = torch.cat([cached[0], key], 2), torch.cat([cached[1], value], 2)
            attended = functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
            x = x + self.attention_out(attended.transpose(1, 2).reshape(rows, length, width))
            return x + self.ffn_down(functional.gelu(self.ffn_up(self.ffn_norm(x)))), (key, value)

    class SideNetwork(nn.Module):
        """The side network, and the ladder around the backbone: it records
        the backbone's states through hooks and runs the backbone's own
        forward without gradients (``decoder_forward``)."""

        def __init__(self, decoder, *, hidden: int, layers: int, width: int, heads: int, ffn: int,
                     temperature: float, device, dtype):
            super().__init__()
            self.ladders = nn.ModuleList(nn.Linear(hidden, width, device=device, dtype=dtype)
                                         for _ in range(layers + 1))  # the embeddings, then each block's output
            self.gates = nn.Parameter(torch.zeros(layers, device=device, dtype=dtype))  # α_i: μ_i = σ(0) = ½
            self.blocks = nn.ModuleList(SideBlock(width, heads, ffn, device, dtype) for _ in range(layers))
            self.final_norm = nn.LayerNorm(width, device=device, dtype=dtype)
            self.upsample = nn.Linear(width, hidden, device=device, dtype=dtype)
            nn.init.zeros_(self.upsample.weight)  # the side network's contribution starts at zero
            nn.init.zeros_(self.upsample.bias)
            for block in self.blocks:  # small random side blocks (GPT-2's initialisation scale)
                for layer in (block.qkv, block.attention_out, block.ffn_up, block.ffn_down):
                    nn.init.normal_(layer.weight, std=0.02)
                    nn.init.zeros_(layer.bias)
            self.temperature = temperature
            # Held in lists so that they are not registered as submodules (and saved) twice;
            # a deepcopy of the model (a preference run's frozen reference) copies them consistently.
            self._decoder = [decoder]
            self._states: list = []

        def record_embeddings(self, module, args, kwargs):
            self._states.clear()
            self._states.append(args[0] if args else kwargs["hidden_states"])

        def record_block_output(self, module, args, kwargs, output):
            self._states.append(output[0] if isinstance(output, tuple) else output)

        def decoder_forward(self, *args, **kwargs):
            """The backbone decoder's forward, under no_grad, with the side
            network's output added to its final hidden state."""
            decoder = self._decoder[0]
            with torch.no_grad():
                output = type(decoder).forward(decoder, *args, **kwargs)
            states, self._states = self._states, []
            if len(states) != len(self.ladders):
                raise RuntimeError(f"the ladder recorded {len(states)} backbone states, expected {len(self.ladders)}")
            cache = getattr(output, "past_key_values", None)  # generation: the side blocks cache there too
            side = self.side_output(states, kwargs.get("attention_mask"), cache)
            output.last_hidden_state = output.last_hidden_state + side.to(output.last_hidden_state.dtype)
            return output

        def side_output(self, states, attention_mask, cache):
            length = states[0].shape[1]
            past = cache.get_seq_length() - length if cache is not None else 0
            cached = getattr(cache, CACHE_ATTRIBUTE, None) if past else None
            if past and (cached is None or cached[0][0].shape[2] != past):
                raise RuntimeError("the side network's cache does not match the backbone's")
            mask = causal_mask(attention_mask, past, length, states[0].device)
            dtype = self.upsample.weight.dtype
            mu = torch.sigmoid(self.gates / self.temperature)
            x = self.ladders[0](states[0].to(dtype))
            kept = []
            for i, block in enumerate(self.blocks):
                x = mu[i] * self.ladders[i + 1](states[i + 1].to(dtype)) + (1 - mu[i]) * x
                x, keys_values = block(x, mask, cached[i] if cached else None)
                kept.append(keys_values)
            if cache is not None:
                setattr(cache, CACHE_ATTRIBUTE, kept)
            return self.upsample(self.final_norm(x))

    def causal_mask(attention_mask, past: int, length: int, device):
        """Which keys each query may attend to, (rows or 1, 1, queries, keys):
        itself and the earlier positions that are not padding."""
        total = past + length
        keys = torch.arange(total, device=device)
        queries = torch.arange(past, total, device=device)
        allowed = keys[None, :] <= queries[:, None]
        if attention_mask is None:
            return allowed[None, None]
        if attention_mask.dim() != 2:
            raise ValueError("Ladder Side-Tuning takes a (rows, positions) attention mask, not a "
                             f"{attention_mask.dim()}-D one")
        padding_free = attention_mask[:, -total:].bool()
        itself = keys[None, :] == queries[:, None]  # a padding query attends to itself, never to nothing
        return ((allowed[None] & padding_free[:, None, :]) | itself[None])[:, None]

    return SideNetwork


def prepare(model, params: LadderParams, context=None):
    hidden = model_dims(model.config)[0]
    width, heads = side_shape(params, model.config)
    _, blocks = transformer_blocks(model)
    decoder = getattr(model, model.base_model_prefix)
    embeddings = model.get_input_embeddings().weight
    side = _side_network_class()(decoder, hidden=hidden, layers=len(blocks), width=width, heads=heads,
                                 ffn=max(1, round(width * _ffn_ratio(model.config))),
                                 temperature=params.gate_temperature, device=embeddings.device,
                                 dtype=embeddings.dtype)
    blocks[0].register_forward_pre_hook(side.record_embeddings, with_kwargs=True)
    for block in blocks:
        block.register_forward_hook(side.record_block_output, with_kwargs=True)
    decoder.forward = side.decoder_forward  # the backbone runs without gradients, the side network with
    model.ladder_side = side
    model.ladder_settings = config_to_dict(params)  # what ``export`` writes beside the tensors
    names = {name for name, _ in model.named_parameters() if name.startswith("ladder_side.")}
    head = head_parameters(model) - names if context is not None and context.task in CLASSIFIER_TASKS else set()
    return train_only(model, names | head)


def export(model, directory) -> None:
    export_trained(model, directory, config_file=CONFIG_FILE, method="ladder", settings=model.ladder_settings)


def attach_saved(model, directory):
    """Put the side network saved in ``directory`` beside ``model`` (the
    base it was trained on, loaded for the same task)."""
    return attach_trained(model, directory, config_file=CONFIG_FILE, prepare=prepare, params_class=LadderParams)


def check(params: LadderParams, model_config, task: str) -> dict[str, str]:
    problems = blocks_problems(model_config, task)
    if problems:
        return problems
    try:
        side_shape(params, model_config)
        prepare(meta_model(model_config, task), params)
    except ConfigError as exc:
        return exc.errors
    return {}
