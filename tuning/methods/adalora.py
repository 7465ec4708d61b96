"""AdaLoRA: LoRA in SVD form whose rank budget moves between layers during
training (Zhang et al., 2023, arXiv:2303.10512), through peft.

Every layer starts at ``initial_rank``; after the warm-up part of the run,
the least important singular values are pruned step by step until the
average rank is ``target_rank``, which then stays fixed for the final
part. peft needs the run length up front (``context.total_steps``) and a
call after every optimizer step (``on_step``). Pruned ranks are masked in
training and cut out of the saved adapter.

peft's wrapper adds an orthogonality penalty to the loss its forward
returns. The training loop computes the task's loss without it and adds
``penalty`` itself, so the loss and eval loss it reports are the plain
cross-entropy (comparable with other methods) and the penalty is a metric
of its own. A checkpoint also holds ``training_state``: the adapter at its
full initial rank and the rank allocator's importance averages, which a
resumed run needs to prune the same ranks an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.errors import ConfigError
from tuning.methods.common import (dropout_setting, on_meta, peft_task_type, presets, rank_problems,
                                   target_modules_setting, targets)


@dataclass(frozen=True, kw_only=True)
class AdaloraParams:
    initial_rank: int = setting(12, help="Rank every layer starts with.", min=1, max=1024, basic=True,
                                label="Initial rank")
    target_rank: int = setting(8, help="Average rank per layer after pruning: the budget AdaLoRA shares out.",
                               min=1, max=1024, basic=True, label="Target rank")
    alpha: float = setting(32.0, help="Scaling numerator: the update is scaled by alpha / (current rank).",
                           min=0.0, max=4096.0)
    dropout: float = dropout_setting(0.05)
    target_modules: str = target_modules_setting()
    warmup_fraction: float = setting(0.1, help="Fraction of the run trained at the initial rank before pruning "
                                               "starts (t_i in the paper).", min=0.0, max=0.45)
    final_fraction: float = setting(0.2, help="Fraction at the end of the run trained with the final ranks fixed "
                                              "(t_f in the paper).", min=0.0, max=0.45)
    reallocate_every: int = setting(10, help="Steps between rank reallocations (ΔT in the paper).", min=1,
                                    max=100000)
    orthogonality_weight: float = setting(0.5, help="Weight of the penalty keeping the singular vectors "
                                                    "orthogonal, added to the loss.", min=0.0, max=10.0)


PRESETS = presets(quick=(0.002, {"initial_rank": 12, "target_rank": 8, "reallocate_every": 5}),
                  balanced=(0.001, {}),
                  thorough=(0.0005, {"initial_rank": 24, "target_rank": 16}))


def prepare(model, params: AdaloraParams, context=None):
    from peft import AdaLoraConfig, get_peft_model

    total = context.total_steps if context else 0
    if total < 2:
        raise ConfigError({"max_steps": "AdaLoRA schedules its ranks over the run and needs at least 2 steps"})
    config = AdaLoraConfig(
        init_r=params.initial_rank, target_r=params.target_rank, lora_alpha=params.alpha,
        lora_dropout=params.dropout, target_modules=targets(params.target_modules),
        task_type=peft_task_type(context), total_step=total, tinit=int(params.warmup_fraction * total),
        tfinal=int(params.final_fraction * total), deltaT=params.reallocate_every,
        orth_reg_weight=params.orthogonality_weight,
    )
    peft_model = get_peft_model(model, config)
    if on_meta(peft_model):
        # Moving the constant "ranknum" to the meta device re-wraps it as a
        # Parameter that requires grad; it never trains, so do not count it.
        for name, parameter in peft_model.named_parameters():
            if ".ranknum." in name:
                parameter.requires_grad_(False)
    return peft_model


def on_step(model, step: int) -> None:
    """Score importance from this step's gradients and prune to the budget;
    must run before the gradients are zeroed."""
    model.base_model.update_and_allocate(step)


def penalty(model):
    """The weighted orthogonality penalty, as ``AdaLoraModel.forward`` adds it
    to the loss: the mean over the adapter's A and B matrices of
    ‖AAᵀ − I‖_F (‖BᵀB − I‖_F), times ``orthogonality_weight``."""
    import torch

    adalora = model.base_model
    adapter = adalora.trainable_adapter_name
    terms = []
    for name, matrix in adalora.model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and adapter in name:
            gram = matrix @ matrix.T if "lora_A" in name else matrix.T @ matrix
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            terms.append(torch.linalg.matrix_norm(gram - eye, ord="fro"))
    weight = adalora.peft_config[adapter].orth_reg_weight
    return weight * torch.stack(terms).mean() if terms else torch.zeros(())


ALLOCATOR_AVERAGES = ("ipt", "exp_avg_ipt", "exp_avg_unc")  # peft's RankAllocator dicts, by parameter name


def training_state(model) -> tuple[dict, dict]:
    """What a checkpoint needs beyond the saved adapter: every trainable
    tensor at its full initial rank (the saved adapter is cut to the ranks
    kept, but a pruned triplet can come back at the next reallocation), the
    rank allocator's importance averages, and the current rank pattern."""
    adalora = model.base_model
    tensors = {f"weight/{name}": parameter.detach()
               for name, parameter in adalora.model.named_parameters() if parameter.requires_grad}
    for average in ALLOCATOR_AVERAGES:
        tensors.update({f"{average}/{name}": value for name, value in
                        getattr(adalora.rankallocator, average).items()})
    return tensors, {"rank_pattern": adalora.peft_config[adalora.trainable_adapter_name].rank_pattern}


def restore_training_state(model, tensors: dict, info: dict) -> None:
    """Put back what ``training_state`` returned, into a model prepared with
    the same settings; the parameters are updated in place, so an optimizer
    built on them keeps them."""
    import torch

    adalora = model.base_model
    parameters = dict(adalora.model.named_parameters())
    saved = {key.split("/", 1)[1] for key in tensors if key.startswith("weight/")}
    expected = {name for name, parameter in parameters.items() if parameter.requires_grad}
    if saved != expected:
        raise ConfigError({"resume_from": "the checkpoint was written by an AdaLoRA run with other settings "
                                          "(initial rank or target modules); resume it with its own settings"})
    with torch.no_grad():
        for name in saved:
            parameters[name].copy_(tensors[f"weight/{name}"])
    allocator = adalora.rankallocator
    for average in ALLOCATOR_AVERAGES:
        prefix = f"{average}/"
        setattr(allocator, average, {key[len(prefix):]: value.to(parameters[key[len(prefix):]].device)
                                     for key, value in tensors.items() if key.startswith(prefix)})
    adalora.peft_config[adalora.trainable_adapter_name].rank_pattern = info.get("rank_pattern")


def check(params: AdaloraParams, model_config, task: str) -> dict[str, str]:
    if params.target_rank > params.initial_rank:
        return {"target_rank": f"must be at most the initial rank ({params.initial_rank}): AdaLoRA only prunes"}
    return rank_problems(prepare, params, model_config, task, rank=params.initial_rank, field="initial_rank")
