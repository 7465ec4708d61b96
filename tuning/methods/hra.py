"""HRA: each weight is multiplied by a chain of r learned Householder
reflections (Yuan et al., 2024, "Bridging The Gap between Low-rank and
Orthogonal Adaptation via Householder Reflection Adaptation",
arXiv:2405.17484), through peft."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import peft_task_type, presets, rank_problems, target_modules_setting, targets


@dataclass(frozen=True, kw_only=True)
class HraParams:
    rank: int = setting(8, help="Number of Householder reflections per layer; even, so that they start in "
                                "cancelling pairs (the adapter starts as the identity).", min=2, max=4096,
                        basic=True, label="Reflections")
    apply_gs: bool = setting(False, help="Orthogonalise the reflection vectors (Gram-Schmidt), the paper's "
                                         "regularised variant.", label="Gram-Schmidt")
    target_modules: str = target_modules_setting()


PRESETS = presets(quick=(0.002, {"rank": 8}), balanced=(0.001, {"rank": 8}), thorough=(0.0005, {"rank": 16}))


def prepare(model, params: HraParams, context=None):
    from peft import HRAConfig, get_peft_model

    config = HRAConfig(r=params.rank, apply_GS=params.apply_gs, target_modules=targets(params.target_modules),
                       task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: HraParams, model_config, task: str) -> dict[str, str]:
    if params.rank % 2:
        return {"rank": "must be even: reflections start in cancelling pairs so the adapter starts as the identity"}
    return rank_problems(prepare, params, model_config, task, rank=params.rank, field="rank")
