"""LoHa: the update is the Hadamard (elementwise) product of two low-rank
products, reaching rank r² with 2r-rank parameters (Hyeon-Woo et al., 2022,
"FedPara", arXiv:2108.06098), through peft (LyCORIS family)."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import (module_dropout_setting, peft_task_type, presets, rank_dropout_setting,
                                   rank_problems, target_modules_setting, targets)


@dataclass(frozen=True, kw_only=True)
class LohaParams:
    rank: int = setting(8, help="Rank of each of the two low-rank factors; the update reaches rank².", min=1,
                        max=512, basic=True, label="Rank")
    alpha: float = setting(16.0, help="Scaling numerator: the update is scaled by alpha / rank.", min=0.0,
                           max=4096.0, basic=True)
    rank_dropout: float = rank_dropout_setting()
    module_dropout: float = module_dropout_setting()
    target_modules: str = target_modules_setting()


PRESETS = presets(quick=(0.001, {"rank": 4, "alpha": 8}),
                  balanced=(0.0005, {"rank": 8, "alpha": 16}),
                  thorough=(0.0002, {"rank": 16, "alpha": 32}))


def prepare(model, params: LohaParams, context=None):
    from peft import LoHaConfig, get_peft_model

    config = LoHaConfig(r=params.rank, alpha=params.alpha, rank_dropout=params.rank_dropout,
                        module_dropout=params.module_dropout, target_modules=targets(params.target_modules),
                        task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: LohaParams, model_config, task: str) -> dict[str, str]:
    return rank_problems(prepare, params, model_config, task, rank=params.rank, field="rank")
