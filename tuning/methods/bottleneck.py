"""Bottleneck adapters: small down-project → nonlinearity → up-project
networks added to a sublayer's output, the rest of the model frozen.

- Houlsby (Houlsby et al., 2019, "Parameter-Efficient Transfer Learning
  for NLP", arXiv:1902.00751): one adapter after the attention output and one
  after the FFN output of every block, and the blocks' normalisation layers
  train too, as in the paper.
- Pfeiffer (Pfeiffer et al., 2021, "AdapterFusion", arXiv:2005.00247): one
  adapter after the FFN output only; nothing else trains.
- Compacter (Mahabadi et al., 2021, "Compacter: Efficient Low-Rank
  Hypercomplex Adapter Layers", arXiv:2106.04647): Houlsby's placement, each
  projection a parameterised hypercomplex multiplication (PHM) layer
  W = Σᵢ Aᵢ ⊗ (sᵢ tᵢᵀ): n "slow" n × n matrices Aᵢ shared by every adapter
  of the model and rank-one "fast" factors per layer.

An adapter computes h + U f(D h + b_D) + b_U on the sublayer's output h; U
starts at zero, so training starts from the base model. AdapterHub's
``adapters`` library would pull transformers 4.57 (the studio pins 5.x), so
the layers are built here.

Adapters with a nonlinearity cannot be folded into the base weights, and
neither peft nor transformers can load them: the output is the trained
tensors (``adapter_model.safetensors``) and ``bottleneck_adapter.json`` (the
settings), which ``tuning.loading.load_artifact`` puts back on the base.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.errors import ConfigError
from tuning.fields import config_to_dict, setting
from tuning.methods.blocks import transformer_blocks
from tuning.methods.common import presets
from tuning.methods.saved_tensors import attach_trained, export_trained
from tuning.methods.wrapped import block_linears, swap_in, train_wrappers, wrapped_problems

CONFIG_FILE = "bottleneck_adapter.json"  # what marks an output directory as a bottleneck adapter
VARIANTS = ("houlsby", "pfeiffer", "compacter")
ACTIVATIONS = ("relu", "gelu", "silu")


@dataclass(frozen=True, kw_only=True)
class BottleneckParams:
    variant: str = setting("houlsby", choices=VARIANTS, basic=True, label="Variant",
                           help="'houlsby': adapters after attention and FFN, norms train; 'pfeiffer': one adapter "
                                "after the FFN; 'compacter': Houlsby's placement with shared hypercomplex (PHM) "
                                "layers, far fewer parameters.")
    reduction_factor: int = setting(16, min=1, max=4096, basic=True, label="Reduction factor",
                                    help="Hidden size ÷ bottleneck size (16 for a 576-wide model: 36 units).")
    activation: str = setting("relu", choices=ACTIVATIONS, help="Nonlinearity inside the bottleneck.")
    phm_dim: int = setting(4, min=2, max=64, label="PHM dimension n",
                           help="Compacter only: the number n of Kronecker sums (and the size of the shared n × n "
                                "matrices); must divide the hidden size and the bottleneck size.")
    attention_output: str = setting("o_proj", help="Name of the attention output projection in each block "
                                                   "(Houlsby and Compacter adapt its output).")
    ffn_output: str = setting("down_proj", help="Name of the FFN output projection in each block (fc2 or "
                                                "c_proj in some architectures).")


PRESETS = presets(quick=(0.002, {}), balanced=(0.001, {}), thorough=(0.0005, {"reduction_factor": 8}))


def phm_weight(slow, s, t):
    """W = Σᵢ Aᵢ ⊗ (sᵢ tᵢᵀ) for Aᵢ = slow[i] (n × n), sᵢ = s[i] (out/n),
    tᵢ = t[i] (in/n): an (out × in) matrix."""
    import torch

    n, out_part, in_part = slow.shape[0], s.shape[1], t.shape[1]
    fast = s[:, :, None] * t[:, None, :]  # Bᵢ = sᵢ tᵢᵀ
    return torch.einsum("iac,ibd->abcd", slow, fast).reshape(n * out_part, n * in_part)


def _layers():
    import math

    import torch
    from torch import nn

    class PhmLinear(nn.Module):
        """A PHM layer whose slow matrices live on the model (one set for
        every adapter; held here without registering them twice)."""

        def __init__(self, slow: nn.Module, n: int, in_features: int, out_features: int, *, zero: bool, device):
            super().__init__()
            self._slow = [slow]
            self.phm_s = nn.Parameter(torch.empty(n, out_features // n, device=device))
            self.phm_t = nn.Parameter(torch.empty(n, in_features // n, device=device))
            self.bias = nn.Parameter(torch.zeros(out_features, device=device))
            # The up projection starts at zero (sᵢ = 0), so the adapter starts as no change.
            nn.init.zeros_(self.phm_s) if zero else nn.init.normal_(self.phm_s, std=0.01)
            nn.init.normal_(self.phm_t, std=1 / math.sqrt(in_features // n))

        def forward(self, x):
            return nn.functional.linear(x, phm_weight(self._slow[0].weight, self.phm_s, self.phm_t), self.bias)

    class SlowWeights(nn.Module):
        def __init__(self, n: int, device):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(n, n, n, device=device))
            nn.init.xavier_uniform_(self.weight.view(n * n, n))

    class Adapted(nn.Module):
        """A frozen sublayer output h followed by h + U f(D h)."""

        def __init__(self, base: nn.Linear, down: nn.Module, up: nn.Module, activation: str):
            super().__init__()
            self.base, self.adapter_down, self.adapter_up = base, down, up
            self.activation = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}[activation]()

        def forward(self, x):
            h = self.base(x)
            return h + self.adapter_up(self.activation(self.adapter_down(h)))

    def linear_pair(width: int, size: int, device):
        down, up = nn.Linear(width, size, device=device), nn.Linear(size, width, device=device)
        nn.init.normal_(down.weight, std=1 / math.sqrt(width))
        nn.init.zeros_(down.bias)
        nn.init.zeros_(up.weight)
        nn.init.zeros_(up.bias)
        return down, up

    return PhmLinear, SlowWeights, Adapted, linear_pair


def _norm_parameters(model) -> set[str]:
    prefix, blocks = transformer_blocks(model)
    return {f"{prefix}.{module_name}.{name}" for module_name, module in blocks.named_modules()
            if "norm" in type(module).__name__.lower() for name, _ in module.named_parameters()}


def prepare(model, params: BottleneckParams, context=None):
    phm_linear, slow_weights, adapted, linear_pair = _layers()
    attention = [] if params.variant == "pfeiffer" else block_linears(model, params.attention_output,
                                                                        blame="attention_output")
    names = attention + block_linears(model, params.ffn_output, blame="ffn_output")
    device = next(model.parameters()).device
    width = model.get_submodule(names[0]).out_features
    size = max(1, width // params.reduction_factor)
    n = params.phm_dim
    if params.variant == "compacter":
        for value, what in ((width, "the hidden size"), (size, f"the bottleneck size {width} ÷ reduction factor")):
            if value % n:
                raise ConfigError({"phm_dim": f"{n} does not divide {what} ({value}); choose a divisor of both"})
        model.compacter_slow_weights = slow_weights(n, device)

    def wrap(name, layer):
        if layer.out_features != width:
            blame = "attention_output" if name in attention else "ffn_output"
            raise ConfigError({blame: f"{name} writes {layer.out_features} features, not the hidden size {width}"})
        if params.variant == "compacter":
            slow = model.compacter_slow_weights
            down = phm_linear(slow, n, width, size, zero=False, device=device)
            up = phm_linear(slow, n, size, width, zero=True, device=device)
        else:
            down, up = linear_pair(width, size, device)
        return adapted(layer, down, up, params.activation)

    wrappers = swap_in(model, names, wrap)
    also = {name for name, _ in model.named_parameters() if name.startswith("compacter_")}
    if params.variant != "pfeiffer":
        also |= _norm_parameters(model)
    model.bottleneck_settings = config_to_dict(params)  # what ``export`` writes beside the tensors
    return train_wrappers(model, wrappers, context, also=frozenset(also))


def export(model, directory) -> None:
    export_trained(model, directory, config_file=CONFIG_FILE, method="bottleneck",
                   settings=model.bottleneck_settings)


def attach_saved(model, directory):
    """Put the bottleneck adapter saved in ``directory`` on ``model`` (the
    base it was trained on, loaded for the same task)."""
    return attach_trained(model, directory, config_file=CONFIG_FILE, prepare=prepare,
                          params_class=BottleneckParams)


def check(params: BottleneckParams, model_config, task: str) -> dict[str, str]:
    return wrapped_problems(prepare, params, model_config, task)
