"""What the methods whose adapters grow rank while training share
(IncreLoRA, TriAdaptLoRA): the settings of a rank budget and its schedule,
the layer every targeted linear becomes, growing its tensors (and the
optimizer's state with them) in place, the orthogonality penalty, the job's
log line, and the export as a stock peft LoRA adapter whose ``rank_pattern``
holds each module's final rank.

Growing keeps every trainable tensor the same ``nn.Parameter`` object and
swaps a larger tensor into it (``torch.utils.swap_tensors``); AdamW's moments for it are padded with zeros
(the new entries start with no history). So the optimizer, the loop's list
of trainable parameters and the gradient clipping keep working on the same
objects, and the number and order of parameters never change. The
allocator's state (importance averages, reserve scale) lives in each
layer's buffers, and a layer takes the shapes of whatever state dict is
loaded into it, so a checkpoint written after a growth step (weights,
optimizer state) loads back with the grown shapes through the ordinary
resume path.

torch and peft are imported inside the functions: the method table is read
by the web process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from tuning.errors import ConfigError
from tuning.fields import setting
from tuning.methods.base import CLASSIFIER_TASKS
from tuning.methods.blocks import head_parameters
from tuning.methods.common import dropout_setting, peft_task_type, target_modules_setting
from tuning.methods.wrapped import block_linears, swap_in, train_wrappers

LOGGED_MODULES = 6  # a growth line names this many modules, then counts the rest


@dataclass(frozen=True, kw_only=True)
class GrowthParams:
    initial_rank: int = setting(2, help="Rank every targeted module starts with.", min=1, max=1024, basic=True,
                                label="Initial rank")
    target_rank: int = setting(8, help="Average rank per module once the budget is spent: the budget is this times "
                                       "the number of targeted modules, shared out by importance.",
                               min=1, max=1024, basic=True, label="Target average rank")
    grow_by: int = setting(2, help="Ranks a module gains each time it is chosen.", min=1, max=256,
                           label="Rank increment")
    alpha: float = setting(16.0, help="Scaling numerator: the update is scaled by alpha / (the module's current "
                                      "rank), as in the papers.", min=0.0, max=4096.0)
    dropout: float = dropout_setting(0.05)
    target_modules: str = target_modules_setting()
    warmup_fraction: float = setting(0.1, help="Fraction of the run trained at the initial ranks before any "
                                               "growth.", min=0.0, max=0.45)
    final_fraction: float = setting(0.2, help="Fraction at the end of the run trained with the ranks fixed; growth "
                                              "stops before it, budget spent or not.", min=0.0, max=0.45)
    grow_every: int = setting(10, help="Steps between growth rounds.", min=1, max=100000)
    orthogonality_weight: float = setting(0.1, help="Weight of the penalty keeping the rows of A and the columns of "
                                                    "B orthonormal, added to the loss.", min=0.0, max=10.0)


@dataclass(frozen=True)
class GrowthPlan:
    """What the ``grow`` hook reads on the model (``model.tuning_growth``):
    the settings, the run's length and the budget."""

    params: GrowthParams
    total_steps: int
    task: str
    budget: int  # total rank over all targeted modules once grown

    @property
    def warmup_steps(self) -> int:
        return int(self.params.warmup_fraction * self.total_steps)

    @property
    def last_growth_step(self) -> int:
        return self.total_steps - int(self.params.final_fraction * self.total_steps)

    def due(self, step: int) -> bool:
        return self.warmup_steps < step <= self.last_growth_step and step % self.params.grow_every == 0

    def rounds(self) -> int:
        """How many growth rounds the schedule holds."""
        every = self.params.grow_every
        return max(0, self.last_growth_step // every - self.warmup_steps // every)

    def progress(self, step: int) -> float:
        """How far into the growth phase ``step`` is, 0 … 1."""
        span = max(1, self.last_growth_step - self.warmup_steps)
        return min(1.0, max(0.0, (step - self.warmup_steps) / span))


def growth_problems(params: GrowthParams) -> dict[str, str]:
    if params.target_rank < params.initial_rank:
        return {"target_rank": f"must be at least the initial rank ({params.initial_rank}): this method only grows "
                               f"ranks (AdaLoRA prunes them)"}
    if params.warmup_fraction + params.final_fraction >= 0.9:
        return {"final_fraction": "leaves less than a tenth of the run for growth; lower it or the warmup fraction"}
    return {}


def attach(model, params: GrowthParams, context, layer_class, **layer_settings):
    """Wrap the targeted linear layers of the transformer blocks with
    ``layer_class``, freeze the rest, and leave the plan on the model."""
    names = block_linears(model, params.target_modules)
    widths = {name: min(model.get_submodule(name).in_features, model.get_submodule(name).out_features)
              for name in names}  # a module's rank can be at most its narrower side
    narrowest = min(widths, key=widths.get)
    if params.initial_rank > widths[narrowest]:
        raise ConfigError({"initial_rank": f"{params.initial_rank} is larger than the targeted layer {narrowest} "
                                           f"({widths[narrowest]} wide); use at most {widths[narrowest]}"})
    if params.target_rank * len(names) > sum(widths.values()):
        raise ConfigError({"target_rank": f"a budget of {params.target_rank} per module is more than the "
                                          f"{len(names)} targeted layers can hold (on average "
                                          f"{sum(widths.values()) // len(names)} wide); lower it"})
    wrappers = swap_in(model, names, lambda name, base: layer_class(base, rank=params.initial_rank, alpha=params.alpha,
                                                                    dropout=params.dropout, **layer_settings))
    total_steps = context.total_steps if context is not None else 0
    task = context.task if context is not None else "sft"
    model.tuning_growth = GrowthPlan(params=params, total_steps=total_steps, task=task,
                                     budget=params.target_rank * len(wrappers))
    return train_wrappers(model, wrappers, context)


def growing_layers(model) -> dict:
    """The wrapped layers by module name, in the model's order."""
    return {name: module for name, module in model.named_modules() if getattr(module, "grows_rank", False)}


def ranks_in_use(layers: dict) -> int:
    return sum(layer.rank for layer in layers.values())


def share_out(scores: dict[str, float], layers: dict, *, modules: int, room: int, grow_by: int) -> dict[str, int]:
    """The modules that grow this round and by how many ranks: the
    ``modules`` highest-scoring ones with room left under their width, each
    by ``grow_by``, never beyond ``room`` ranks in all (the last chosen may
    get fewer)."""
    grown = {}
    for name in sorted(scores, key=lambda name: -scores[name]):
        if len(grown) == modules or room <= 0:
            break
        layer = layers[name]
        ranks = min(grow_by, room, layer.capacity - layer.rank)
        if ranks > 0:
            grown[name] = ranks
            room -= ranks
    return grown


def still_growing(layers: dict) -> bool:
    return any(bool(layer.growing) for layer in layers.values())


def end_round(step: int, plan: GrowthPlan, layers: dict, grown: dict[str, int], optimizer) -> list[str]:
    """Grow what this step's round chose (nothing off a round), and fix the
    ranks once the budget is spent or the growth phase is over; the log
    lines saying so."""
    for name, ranks in grown.items():
        layers[name].grow(ranks, optimizer)
    messages = [growth_message(step, grown, layers, plan.budget)] if grown else []
    if ranks_in_use(layers) >= plan.budget or step >= plan.last_growth_step:
        for layer in layers.values():
            layer.stop_growing()
        messages.append(growth_ended_message(step, layers, plan.budget))
    return messages


def growth_message(step: int, grown: dict[str, int], layers: dict, budget: int) -> str:
    """One line of the job's log: when, where and by how much rank grew."""
    named = [f"{name} +{ranks} → {layers[name].rank}" for name, ranks in list(grown.items())[:LOGGED_MODULES]]
    more = f" and {len(grown) - LOGGED_MODULES} more" if len(grown) > LOGGED_MODULES else ""
    return (f"Step {step}: rank grew in {len(grown)} module{'s' if len(grown) != 1 else ''}: {', '.join(named)}{more} "
            f"({ranks_in_use(layers)} of {budget} ranks in use)")


def growth_ended_message(step: int, layers: dict, budget: int) -> str:
    used = ranks_in_use(layers)
    why = "budget spent" if used >= budget else "end of the growth phase"
    ranks = [layer.rank for layer in layers.values()]
    return (f"Step {step}: ranks fixed ({why}): {used} of {budget} ranks in use, {min(ranks)} to {max(ranks)} per "
            f"module (each module's in the adapter's rank_pattern)")


def rank_pattern(layers: dict) -> dict[str, int]:
    return {name: layer.rank for name, layer in layers.items()}


def grow_parameter(parameter, new_part, dim: int, optimizer) -> None:
    """Append ``new_part`` to ``parameter`` along ``dim`` in place (the same
    Parameter object), padding the optimizer's per-entry state (AdamW's
    moments) with zeros; the gradient of the old shape is dropped."""
    import torch

    old_shape = parameter.shape
    parameter.grad = None
    # Not ``parameter.data = …``: autograd would keep the accumulator it made for the old shape (a graph
    # still held elsewhere keeps it alive) and refuse the next backward's gradient of the new shape.
    grown = torch.nn.Parameter(torch.cat([parameter.detach(), new_part.to(parameter.dtype)], dim=dim),
                               requires_grad=parameter.requires_grad)
    torch.utils.swap_tensors(parameter, grown)
    state = optimizer.state.get(parameter, {}) if optimizer is not None else {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == old_shape:
            pad_shape = list(value.shape)
            pad_shape[dim] = new_part.shape[dim]
            state[key] = torch.cat([value, value.new_zeros(pad_shape)], dim=dim)


def penalty(model):
    """The weighted orthogonality penalty of the SVD-form adapters (AdaLoRA's,
    which both papers keep): the mean over the layers' A and B of ‖AAᵀ − I‖_F
    and ‖BᵀB − I‖_F, times ``orthogonality_weight``."""
    import torch

    terms = []
    for layer in growing_layers(model).values():
        for gram in (layer.lora_A @ layer.lora_A.T, layer.lora_B.T @ layer.lora_B):
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            terms.append(torch.linalg.matrix_norm(gram - eye, ord="fro"))
    weight = model.tuning_growth.params.orthogonality_weight
    return weight * torch.stack(terms).mean() if terms else torch.zeros(())


def export_lora(model, directory) -> None:
    """Write a stock peft LoRA adapter: each module's update as a plain
    B·A pair of its current rank (``rank_pattern``), scaled by 1
    (``alpha_pattern`` equal to the rank), plus a classifier's head."""
    from pathlib import Path

    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    plan, layers = model.tuning_growth, growing_layers(model)
    tensors = {}
    with torch.no_grad():
        for name, layer in layers.items():
            layer.stop_growing()  # training is over: what the model computes from here is what is saved
            lora_b, lora_a = layer.lora_factors()
            tensors[f"base_model.model.{name}.lora_A.weight"] = lora_a.contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = lora_b.contiguous()
        named = dict(model.named_parameters())
        for head in (head_parameters(model) if plan.task in CLASSIFIER_TASKS else ()):
            tensors[f"base_model.model.{head}"] = named[head].detach().contiguous()
    ranks = rank_pattern(layers)
    config = LoraConfig(r=max(ranks.values()), lora_alpha=max(ranks.values()), target_modules=sorted(ranks),
                        rank_pattern=ranks, alpha_pattern=dict(ranks), lora_dropout=plan.params.dropout,
                        task_type=peft_task_type(plan), base_model_name_or_path=model.name_or_path,
                        inference_mode=True)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    save_file({key: value.float().cpu() for key, value in tensors.items()},
              directory / "adapter_model.safetensors", metadata={"format": "pt"})


@cache
def growing_linear_class():
    """The base class of both methods' layers (built on first use, so that
    importing this module needs no torch)."""
    import torch
    from torch import nn

    class GrowingLinear(nn.Module):
        """A frozen linear layer plus a low-rank update whose rank grows:
        ``lora_A`` (rank × in) and ``lora_B`` (out × rank), with what each
        method puts between them. Subclasses define ``rank``, ``grow``,
        ``stop_growing`` and ``lora_factors`` (the plain LoRA pair of the
        same update)."""

        grows_rank = True

        def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float):
            super().__init__()
            self.base = base
            self.alpha = alpha
            self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
            self.capacity = min(base.in_features, base.out_features)  # a higher rank adds nothing

        def new_tensor(self, *shape):
            """A float32 tensor on the base layer's device (meta while estimating)."""
            return torch.zeros(*shape, device=self.base.weight.device, dtype=torch.float32)

        @property
        def scaling(self) -> float:
            return self.alpha / self.rank

        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            # Take the saved shapes: a checkpoint written after growth steps (resume, best checkpoint).
            for name, parameter in self._parameters.items():
                saved = state_dict.get(prefix + name)
                if parameter is not None and saved is not None and saved.shape != parameter.shape:
                    torch.utils.swap_tensors(parameter, nn.Parameter(parameter.new_empty(saved.shape),
                                                                     requires_grad=parameter.requires_grad))
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    return GrowingLinear


def uniform_rows(rows: int, width: int, like):
    """New rows of A as LoRA starts them (peft: Kaiming-uniform with a = √5,
    i.e. uniform in ±1/√width)."""
    bound = 1 / math.sqrt(width)
    return like.new_empty(rows, width).uniform_(-bound, bound)
