"""The optimizers a run can pick (``TrainConfig.optimizer``): AdamW, or
GaLore (Zhao et al., 2024, arXiv:2403.03507) through the ``galore-torch``
package, the authors' own code.

GaLore keeps AdamW's moments in a low-rank subspace of each weight
matrix's gradient: every ``galore_update_every`` steps the gradient's top
``galore_rank`` singular vectors become the projector P; the optimizer
sees Pᵀ·G (rank × n instead of m × n), and the update it computes is
projected back and scaled by ``galore_scale``. The weights stay full rank
and every one of them trains, so it suits the methods that train the
model's own weight matrices in place (the methods flagged
``trains_weight_matrices``), not adapters (already low rank), biases or
reflections. The 8-bit variant also stores the moments in 8 bits (bitsandbytes;
CUDA only).

Which tensors are projected: the weight matrices of the linear layers,
except the output head, as the paper's recipe (attention and MLP
matrices); embeddings, norms, biases and the head keep plain AdamW.

Nothing here imports torch at import time: the web process reads
``OPTIMIZERS`` to draw the form and the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Optimizer:
    name: str
    label: str
    paper: str
    low_rank: bool  # GaLore: projects the linear layers' gradients
    needs_cuda: bool = False
    moment_bytes: int = 4  # bytes per stored moment value


OPTIMIZERS: dict[str, Optimizer] = {o.name: o for o in (
    Optimizer("adamw", "AdamW", "https://arxiv.org/abs/1711.05101", low_rank=False),
    Optimizer("galore", "GaLore", "https://arxiv.org/abs/2403.03507", low_rank=True),
    Optimizer("galore_8bit", "GaLore 8-bit", "https://arxiv.org/abs/2403.03507", low_rank=True, needs_cuda=True,
              moment_bytes=1),
)}
GALORE_FIELDS = ("galore_rank", "galore_update_every", "galore_scale")


def projected_parameters(model) -> set:
    """The ids of the tensors GaLore projects: 2-D weights of the linear
    layers, without the output head (a vocabulary-sized matrix the paper
    leaves to AdamW)."""
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_weight = getattr(head, "weight", None)
    return {id(module.weight) for module in model.modules()
            if isinstance(module, torch.nn.Linear) and module.weight is not head_weight
            and module.weight.requires_grad and module.weight.dim() == 2}


def galore_groups(groups: list[dict], model, config) -> list[dict]:
    """``groups`` (the method's, which may carry their own learning rates)
    each split into its projected weights, with GaLore's settings, and the
    rest."""
    projected = projected_parameters(model)
    settings = {"rank": config.galore_rank, "update_proj_gap": config.galore_update_every,
                "scale": config.galore_scale, "proj_type": "std"}
    split = []
    for group in groups:
        extra = {key: value for key, value in group.items() if key != "params"}
        params = list(group["params"])
        low_rank = [p for p in params if id(p) in projected]
        plain = [p for p in params if id(p) not in projected]
        split += [{"params": low_rank, **extra, **settings}] if low_rank else []
        split += [{"params": plain, **extra}] if plain else []
    return split


def build_optimizer(groups: list[dict], config, model):
    """The run's optimizer over the method's parameter ``groups``."""
    import torch

    choice = OPTIMIZERS[config.optimizer]
    if not choice.low_rank:
        # The fused kernel updates every tensor in one pass: measured 7x faster
        # than the default for a 135M-parameter full fine-tune on a CPU (see
        # BENCHMARKS.md). It needs floating-point parameters on a CPU or GPU.
        params = [p for group in groups for p in group["params"]]
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay,
                                 **({"fused": True} if fused else {}))
    from galore_torch import GaLoreAdamW, GaLoreAdamW8bit

    groups = galore_groups(groups, model, config)
    if choice.moment_bytes == 1:
        optimizer = GaLoreAdamW8bit(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    else:
        optimizer = GaLoreAdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay,
                                no_deprecation_warning=True)
    # GaLore keeps each matrix's projector as a Python object in the optimizer
    # state; checkpoints are read back with weights_only=True, so they hold
    # its matrix instead and the projector is rebuilt on loading.
    optimizer.register_state_dict_post_hook(_projectors_as_tensors)
    optimizer.register_load_state_dict_post_hook(_projectors_from_tensors)
    return optimizer


def _projectors_as_tensors(optimizer, state_dict: dict) -> dict:
    state = {}
    for key, entry in state_dict["state"].items():
        projector = entry.get("projector")
        if projector is not None:
            entry = {k: v for k, v in entry.items() if k != "projector"}
            entry["projector_matrix"] = projector.ortho_matrix
        state[key] = entry
    return {**state_dict, "state": state}


def _projectors_from_tensors(optimizer) -> None:
    from galore_torch.galore_projector import GaLoreProjector

    for group in optimizer.param_groups:
        for parameter in group["params"]:
            entry = optimizer.state.get(parameter, {})
            if "projector_matrix" in entry:
                projector = GaLoreProjector(group["rank"], update_proj_gap=group["update_proj_gap"],
                                            scale=group["scale"], proj_type=group["proj_type"])
                projector.ortho_matrix = entry.pop("projector_matrix")
                entry["projector"] = projector


def optimizer_state_bytes(model_config, *, trainable: int, optimizer: str = "adamw", galore_rank: int = 128) -> int:
    """Bytes of optimizer state for ``trainable`` parameters, from the
    model's shape alone. AdamW: two fp32 moments each. GaLore: the weights
    beside the embedding (about the blocks' linear matrices, whose smaller
    side is about the hidden size h) keep two moments of rank × (larger
    side) each, r/h of AdamW's, in 4 or 1 bytes, plus an fp32 projector
    of r × (smaller side); the rest keeps AdamW's."""
    from tuning.methods.memory import model_dims

    choice = OPTIMIZERS[optimizer]
    if not choice.low_rank:
        return trainable * 8
    hidden, _, _, vocab = model_dims(model_config)
    projected = max(0, trainable - vocab * hidden)
    fraction = min(galore_rank, hidden) / hidden
    return int((trainable - projected) * 8 + projected * fraction * (2 * choice.moment_bytes + 4))
