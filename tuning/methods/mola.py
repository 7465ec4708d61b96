"""MoLA: a mixture of LoRA experts with layer-wise expert allocation (Gao
et al., 2024, "Higher Layers Need More LoRA Experts", arXiv:2402.08562; the
paper's code is github.com/GCYZSL/MoLA). peft 0.21 has no mixture of LoRA
experts, so the layers are wrapped here (``tuning.methods.wrapped``).

Each targeted linear layer of block j gets N_j LoRA experts (A_e: r × in,
B_e: out × r) and a router W_r (N_j × in, no bias). For a token x:

    p = softmax(W_r x);  T = the top-k experts by p;  g_e = p_e / Σ_{t∈T} p_t
    y = W x + (α / r) Σ_{e∈T} g_e B_e A_e x

The allocation N_j is the paper's point: its MoLA-▽ gives more experts to
higher layers (2, 4, 6, 8 for four groups of consecutive blocks) and beat the
same total spread evenly (5, 5, 5, 5) or towards the bottom (8, 6, 4, 2).
``experts`` takes such a list: one count per group of consecutive blocks
(blocks split as evenly as they go, lower groups one larger), or one count
per block.

The optional load-balancing loss is the paper code's: per router,
N · Σ_e f_e P_e, f_e the share of the top-k choices that went to expert e and
P_e its mean router probability over the tokens, weighted by
``balance_coefficient`` (its code used 0.001 when switched on). It is added
to the gradient inside the forward pass, where the router probabilities are
(DeepSeek-MoE's way), so it acts on whatever loss the task trains.

The routing depends on the input, so a trained MoLA cannot be folded into the
base weights: it is saved as its tensors plus ``mola_adapter.json``
(``tuning.methods.saved_tensors``), which ``tuning.loading.load_artifact``
puts back on the base; merges, folds and quantization refuse it
(``tuning.unfoldable``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.errors import ConfigError
from tuning.fields import config_to_dict, setting
from tuning.methods.blocks import transformer_blocks
from tuning.methods.common import dropout_setting, presets, target_modules_setting
from tuning.methods.saved_tensors import attach_trained, export_trained
from tuning.methods.wrapped import block_linears, swap_in, train_wrappers, wrapped_problems

CONFIG_FILE = "mola_adapter.json"  # what marks an output directory as a MoLA adapter
HIGHER_LAYERS_MORE = "2,4,6,8"  # the paper's MoLA-▽, its best allocation


@dataclass(frozen=True, kw_only=True)
class MolaParams:
    experts: str = setting(HIGHER_LAYERS_MORE, basic=True, label="Experts by layer group",
                           help="LoRA experts per targeted layer, bottom to top: one count per group of consecutive "
                                "blocks, or one per block. The paper's MoLA-▽ 2,4,6,8 (more experts in higher "
                                "layers, its best); MoLA-□ 5,5,5,5; MoLA-△ 8,6,4,2.")
    top_k: int = setting(2, min=1, max=64, basic=True, label="Experts per token (top-k)",
                         help="How many experts the router mixes for each token (the paper: 2).")
    rank: int = setting(8, min=1, max=1024, basic=True, label="Rank per expert", help="Rank r of each LoRA expert.")
    alpha: float = setting(16.0, min=0.0, max=4096.0, label="Alpha", help="Each expert is scaled by alpha / rank.")
    dropout: float = dropout_setting(0.05)
    balance_coefficient: float = setting(0.0, min=0.0, max=1.0, label="Load-balancing loss weight",
                                         help="Weight of the routers' load-balancing loss (0: off, as in the paper's "
                                              "fine-tuning runs; its code used 0.001 when on).")
    target_modules: str = target_modules_setting()


PRESETS = presets(quick=(0.002, {}), balanced=(0.001, {}), thorough=(0.0005, {"rank": 16, "alpha": 32}))


def experts_by_block(text: str, blocks: int) -> list[int]:
    """The expert count of each of ``blocks`` blocks from the ``experts``
    setting (a count per group of consecutive blocks, or per block)."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError({"experts": f"write whole numbers separated by commas, e.g. {HIGHER_LAYERS_MORE} "
                                      f"(got {text!r})"}) from None
    if not counts or min(counts) < 1:
        raise ConfigError({"experts": f"every layer group needs at least one expert (got {text!r})"})
    if len(counts) > blocks:
        raise ConfigError({"experts": f"{len(counts)} counts for a model of {blocks} blocks; give at most one per "
                                      f"block"})
    size, extra = divmod(blocks, len(counts))
    return [count for group, count in enumerate(counts) for _ in range(size + (group < extra))]


def balance_loss(probs, chosen, experts: int):
    """N · Σ_e f_e P_e for one router: probs (tokens, N), chosen (tokens, k)."""
    import torch

    counts = torch.nn.functional.one_hot(chosen.reshape(-1), experts).sum(0).to(probs.dtype)
    return experts * (counts / counts.sum() * probs.mean(0)).sum()


def _mixture_class():
    import math

    import torch
    from torch import nn

    class AddAuxiliaryLoss(torch.autograd.Function):
        """Identity on x whose backward also gives ``loss`` the gradient 1, as
        if it were added to the task's loss."""

        @staticmethod
        def forward(ctx, x, loss):
            ctx.dtype, ctx.device = loss.dtype, loss.device
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return grad, torch.ones((), dtype=ctx.dtype, device=ctx.device)

    class Mixture(nn.Module):
        """A frozen linear layer plus its top-k routed LoRA experts."""

        def __init__(self, base: nn.Linear, experts: int, params: MolaParams):
            super().__init__()
            self.base, self.top_k, self.scaling = base, params.top_k, params.alpha / params.rank
            self.balance = params.balance_coefficient
            device = base.weight.device
            self.router = nn.Linear(base.in_features, experts, bias=False, device=device)  # kaiming-uniform init
            self.lora_A = nn.Parameter(torch.empty(experts, params.rank, base.in_features, device=device))
            self.lora_B = nn.Parameter(torch.zeros(experts, base.out_features, params.rank, device=device))
            for expert in self.lora_A:  # each A as LoRA's, each B zero: the mixture starts as no change
                nn.init.kaiming_uniform_(expert, a=math.sqrt(5))
            self.dropout = nn.Dropout(params.dropout) if params.dropout else nn.Identity()

        def route(self, x):
            """(router probabilities, chosen experts, their renormalised gates) for tokens x (tokens, in)."""
            probs = torch.softmax(self.router(x.to(self.router.weight.dtype)).float(), dim=-1)
            gates, chosen = torch.topk(probs, self.top_k, dim=-1)
            return probs, chosen, gates / gates.sum(-1, keepdim=True)

        def forward(self, x):
            out = self.base(x)
            tokens = x.reshape(-1, x.shape[-1])
            probs, chosen, gates = self.route(tokens)
            # Every expert's low-rank projection, weighted by a gate that is zero off the top-k: exact, and
            # cheap beside the base layer (N·r is small), with no gather/scatter per expert.
            weights = torch.zeros_like(probs).scatter(1, chosen, gates).to(x.dtype)
            low = torch.einsum("ti,nri->tnr", self.dropout(tokens), self.lora_A.to(x.dtype))
            update = torch.einsum("tnr,nor->to", low * weights[..., None], self.lora_B.to(x.dtype))
            out = out + self.scaling * update.reshape(out.shape).to(out.dtype)
            if self.balance and self.training and torch.is_grad_enabled():
                out = AddAuxiliaryLoss.apply(out, self.balance * balance_loss(probs, chosen, len(self.lora_A)))
            return out

    return Mixture


def prepare(model, params: MolaParams, context=None):
    prefix, blocks = transformer_blocks(model)
    counts = experts_by_block(params.experts, len(blocks))
    if params.top_k > min(counts):
        block = counts.index(min(counts))
        raise ConfigError({"top_k": f"{params.top_k} is more than the {min(counts)} experts of block {block}; choose "
                                    f"at most {min(counts)} or give that block more experts"})
    names = block_linears(model, params.target_modules)
    mixture = _mixture_class()

    def wrap(name, layer):
        return mixture(layer, counts[int(name[len(prefix) + 1:].split(".")[0])], params)

    wrappers = swap_in(model, names, wrap)
    model.mola_settings = config_to_dict(params)  # what ``export`` writes beside the tensors
    return train_wrappers(model, wrappers, context)


def export(model, directory) -> None:
    export_trained(model, directory, config_file=CONFIG_FILE, method="mola", settings=model.mola_settings)


def attach_saved(model, directory):
    """Put the MoLA adapter saved in ``directory`` on ``model`` (the base it
    was trained on, loaded for the same task)."""
    return attach_trained(model, directory, config_file=CONFIG_FILE, prepare=prepare, params_class=MolaParams)


def check(params: MolaParams, model_config, task: str) -> dict[str, str]:
    return wrapped_problems(prepare, params, model_config, task)
