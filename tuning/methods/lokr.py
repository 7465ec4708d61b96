"""LoKr: the update is a Kronecker product of a small matrix and a
(low-rank) larger one, a full-rank update from very few parameters
(LyCORIS, Yeh et al., 2023, arXiv:2309.14859), through peft."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import (module_dropout_setting, peft_task_type, presets, rank_dropout_setting, refusals,
                                   target_modules_setting, targets)


@dataclass(frozen=True, kw_only=True)
class LokrParams:
    rank: int = setting(8, help="Rank of the larger Kronecker factor (when it is factorised).", min=1, max=512,
                        basic=True, label="Rank")
    alpha: float = setting(16.0, help="Scaling numerator: the update is scaled by alpha / rank.", min=0.0,
                           max=4096.0, basic=True)
    decompose_both: bool = setting(False, help="Also factorise the smaller Kronecker factor into a low-rank pair.")
    decompose_factor: int = setting(-1, help="Size of the smaller Kronecker factor; -1 picks the most balanced "
                                             "split of each dimension.", min=-1, max=4096)
    rank_dropout: float = rank_dropout_setting()
    module_dropout: float = module_dropout_setting()
    target_modules: str = target_modules_setting()


PRESETS = presets(quick=(0.002, {"rank": 4, "alpha": 8}),
                  balanced=(0.001, {"rank": 8, "alpha": 16}),
                  thorough=(0.0005, {"rank": 16, "alpha": 32}))


def prepare(model, params: LokrParams, context=None):
    from peft import LoKrConfig, get_peft_model

    config = LoKrConfig(r=params.rank, alpha=params.alpha, decompose_both=params.decompose_both,
                        decompose_factor=params.decompose_factor, rank_dropout=params.rank_dropout,
                        module_dropout=params.module_dropout, target_modules=targets(params.target_modules),
                        task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: LokrParams, model_config, task: str) -> dict[str, str]:
    return refusals(prepare, params, model_config, task, blame="decompose_factor")
