"""EigenLoRAx (Kaushik et al., 2025, "EigenLoRAx: Recycling Adapters to
Find Principal Subspaces for Resource-Efficient Adaptation and Inference",
arXiv:2502.04700): a new LoRA adapter built inside the principal subspace of
several LoRA adapters of the same base model, training only its
coefficients.

For every module the sources adapt (the modules all of them adapt), the
rows of the sources' A matrices (r × n each) are stacked into one matrix,
and likewise the columns of their B matrices (m × r each, the source's
scaling folded in); the SVD of each stack gives its principal components,
and the first K are kept, K the fewest whose singular values explain the
``explained_variance`` share of the stack's sum of squares (or a fixed
``components``, as the authors' code does). The SVD is of
the stack itself, not centred as PCA would be, so that each matrix is
exactly coefficients times components (a mean would need an offset that a
stock LoRA has no place for). ``extra_components`` adds random directions
orthogonal to those (Gram-Schmidt), the paper's augmentation for few or
distant sources. The new adapter's matrices are

    A = α_A · V_A   (r × K_A coefficients times the K_A × n components),
    B = V_Bᵀ · α_B  (the m × K_B components times K_B × r coefficients),

and only α_A and α_B train (and a classifier's new head): 2·r·K numbers a
module instead of r·(m + n). α_B starts at zero, so training starts from the
base model, as LoRA does; α_A at random, with LoRA's row scale.

The matrices are torch parametrizations of peft's own LoRA layers, so the
trained adapter is a stock peft LoRA: ``export`` replaces each by its value
(coefficients times components) and peft saves it; ``PeftModel`` loads it
and it folds into the base like any LoRA. The sources are read from their
directories (``adapter_model.safetensors`` and ``adapter_config.json``): on
the studio's form they are picked by artifact id among the team's LoRA
adapters of the run's base model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from tuning.errors import ConfigError
from tuning.fields import setting
from tuning.methods.common import peft_task_type, presets

FIELD = "source_adapters"  # the setting that names the sources; the studio resolves artifact ids in it
_LORA_A, _LORA_B = ".lora_A.weight", ".lora_B.weight"


@dataclass(frozen=True, kw_only=True)
class EigenloraParams:
    source_adapters: str = setting("", basic=True, label="Source LoRA adapters",
                                   help="Two or more LoRA adapters of this base model whose principal subspace the "
                                        "new adapter is built in, comma-separated: artifact ids on the form, "
                                        "adapter directories in a config file.")
    rank: int = setting(8, min=1, max=1024, basic=True, label="Rank",
                        help="Rank r of the new adapter: it trains r × K coefficients for each of A and B of each "
                             "module.")
    alpha: float = setting(16.0, min=0.0, max=4096.0, label="Alpha",
                           help="Scaling numerator: the update is scaled by alpha / rank, as in LoRA.")
    explained_variance: float = setting(0.9, min=0.01, max=1.0, label="Explained variance",
                                        help="K, the number of principal components kept per matrix, is the fewest "
                                             "whose singular values explain this share of the stacked source "
                                             "adapters' sum of squares (1: every component).")
    components: int = setting(0, min=0, max=4096, label="Principal components K",
                              help="A fixed K for every matrix (the authors' code keeps 32), at most the stack's rank; "
                                   "0 chooses it by explained variance.")
    extra_components: int = setting(0, min=0, max=4096, label="Extra orthogonal components",
                                    help="Random directions orthogonal to the principal ones added to each subspace "
                                         "(EigenLoRAx's augmentation when the sources are few or far from the new "
                                         "task); seeded, so a resumed run rebuilds the same.")


PRESETS = presets(quick=(0.01, {}), balanced=(0.005, {}), thorough=(0.003, {"rank": 16}))


def source_paths(params: EigenloraParams) -> list[Path]:
    return [Path(part.strip()) for part in params.source_adapters.split(",") if part.strip()]


def source_configs(params: EigenloraParams) -> list[tuple[Path, dict]]:
    """(directory, adapter_config) of each source: at least two, each a plain
    LoRA adapter (no DoRA), all of one base model; refused naming the field."""
    paths = source_paths(params)
    if len(paths) < 2:
        raise ConfigError({FIELD: f"EigenLoRAx builds its subspace from at least 2 LoRA adapters; got {len(paths)}"})
    sources = []
    for path in paths:
        config_file = path / "adapter_config.json"
        if not config_file.is_file() or not (path / "adapter_model.safetensors").is_file():
            raise ConfigError({FIELD: f"{path} is not an adapter directory (no adapter_config.json and "
                                      f"adapter_model.safetensors)"})
        config = json.loads(config_file.read_text())
        if config.get("peft_type") != "LORA" or config.get("use_dora"):
            kind = "a DoRA adapter" if config.get("use_dora") else f"a {config.get('peft_type')} adapter"
            raise ConfigError({FIELD: f"{path.name} is {kind}; EigenLoRAx takes plain LoRA adapters"})
        sources.append((path, config))
    bases = {config.get("base_model_name_or_path", "") for _, config in sources}
    if len(bases) > 1:
        named = "; ".join(f"{path.name}: {config.get('base_model_name_or_path')}" for path, config in sources)
        raise ConfigError({FIELD: f"the source adapters belong to different base models ({named}); pick adapters "
                                  f"of one base"})
    return sources


def _scaling(config: dict) -> float:
    rank = config.get("r") or 1
    return config.get("lora_alpha", rank) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def stacked_sources(params: EigenloraParams) -> dict[str, tuple]:
    """{module name: (A rows, B columns)} of the modules every source adapts:
    each source's A (r × n) stacked by rows, and its scaled B (m × r) as
    rows of Bᵀ, in float64."""
    import torch
    from safetensors.torch import load_file

    per_source = []
    for path, config in source_configs(params):
        tensors, scale = load_file(path / "adapter_model.safetensors"), _scaling(config)
        modules = {}
        for key, a in tensors.items():
            if key.endswith(_LORA_A) and key[:-len(_LORA_A)] + _LORA_B in tensors:
                name = key[:-len(_LORA_A)].removeprefix("base_model.model.")
                modules[name] = (a.double(), tensors[key[:-len(_LORA_A)] + _LORA_B].double().T * scale)
        per_source.append(modules)
    shared = sorted(set.intersection(*(set(modules) for modules in per_source)))
    if not shared:
        raise ConfigError({FIELD: "the source adapters have no adapted module in common"})
    return {name: (torch.cat([modules[name][0] for modules in per_source]),
                   torch.cat([modules[name][1] for modules in per_source])) for name in shared}


def principal_components(rows, explained: float, fixed: int = 0):
    """(the first K right singular vectors of ``rows`` (K × d, float32), the
    share of the sum of squares they explain): K is ``fixed`` (at most the
    number there are), or else the fewest reaching ``explained``."""
    import torch

    _, singular, vh = torch.linalg.svd(rows, full_matrices=False)
    energy = singular.square()
    if float(energy.sum()) == 0.0:
        raise ConfigError({FIELD: "the source adapters' matrices are all zero here (an untrained LoRA's B): "
                                  "there is no subspace to build"})
    share = energy.cumsum(0) / energy.sum()
    k = min(fixed or int((share < explained - 1e-9).sum()) + 1, len(singular))
    return vh[:k].float(), float(share[k - 1])


def augmented(components, extra: int, generator):
    """``components`` (K × d, orthonormal rows) and up to ``extra`` random
    rows orthonormal to them and to each other (Gram-Schmidt, as a QR)."""
    import torch

    extra = min(extra, components.shape[1] - components.shape[0])
    if extra <= 0:
        return components
    random = torch.randn(extra, components.shape[1], generator=generator, dtype=torch.float64)
    basis, _ = torch.linalg.qr(torch.cat([components.double(), random]).T)  # its first K columns span the components
    return torch.cat([components, basis[:, len(components):].T.float()])


def subspaces(params: EigenloraParams) -> dict[str, tuple]:
    """{module name: (A's components, B's components)}, each K × width."""
    import torch

    generator = torch.Generator().manual_seed(0)  # the extra components, the same on every call
    return {name: tuple(augmented(principal_components(stack, params.explained_variance, params.components)[0],
                                  params.extra_components, generator) for stack in (a, b))
            for name, (a, b) in stacked_sources(params).items()}


def _subspace_class():
    from torch import nn

    class Subspace(nn.Module):
        """A LoRA matrix as coefficients times fixed components: A = α V
        (``rows``: the components span A's rows) or B = Vᵀ α."""

        def __init__(self, components, *, rows: bool):
            super().__init__()
            self.rows = rows
            self.register_buffer("components", components)

        def forward(self, coefficients):
            components = self.components.to(coefficients.dtype)
            return coefficients @ components if self.rows else components.T @ coefficients

        def right_inverse(self, weight):
            components = self.components.to(weight.dtype)
            return weight @ components.T if self.rows else components @ weight

    return Subspace


def prepare(model, params: EigenloraParams, context=None):
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.nn.utils import parametrize

    spaces = subspaces(params)
    config = LoraConfig(r=params.rank, lora_alpha=params.alpha, lora_dropout=0.0, target_modules=sorted(spaces),
                        task_type=peft_task_type(context))
    peft_model = get_peft_model(model, config)
    subspace = _subspace_class()
    inner = peft_model.base_model.model
    for name, (a_components, b_components) in spaces.items():
        layer = inner.get_submodule(name)
        lora_a, lora_b = layer.lora_A["default"], layer.lora_B["default"]
        device = lora_a.weight.device
        parametrize.register_parametrization(lora_a, "weight", subspace(a_components.to(device), rows=True))
        parametrize.register_parametrization(lora_b, "weight", subspace(b_components.to(device), rows=False))
        with torch.no_grad():
            a = lora_a.parametrizations.weight.original
            # LoRA's A rows have a squared norm of 1/3 (Kaiming-uniform); the components are orthonormal rows.
            a.normal_(0.0, 1.0 / math.sqrt(3 * a.shape[1]))
            lora_b.parametrizations.weight.original.zero_()  # B = 0: training starts from the base model
        for module in (lora_a, lora_b):
            module.parametrizations.weight.original.requires_grad_(True)
    return peft_model


def export(model, directory) -> None:
    """Turn every coefficient-times-components matrix into its value and save
    a stock peft LoRA adapter (the model computes the same function after)."""
    import torch
    from torch.nn.utils import parametrize

    with torch.no_grad():
        for module in list(model.modules()):
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    model.save_pretrained(directory, safe_serialization=True)


def check(params: EigenloraParams, model_config, task: str) -> dict[str, str]:
    """The sources as their configs say (no tensor is read): enough, LoRA, one base."""
    try:
        source_configs(params)
    except ConfigError as exc:
        return exc.errors
    return {}
