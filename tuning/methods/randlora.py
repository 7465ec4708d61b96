"""RandLoRA: a full-rank update built from frozen random low-rank bases,
of which only small diagonal scalings are trained (Albert et al., 2025,
arXiv:2502.00987), through peft. The random bases are saved with the
adapter, so it reloads exactly."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import (dropout_setting, peft_task_type, presets, rank_problems, target_modules_setting,
                                   targets)


@dataclass(frozen=True, kw_only=True)
class RandloraParams:
    rank: int = setting(32, help="Rank of each random basis; the layer uses min(in, out) / rank bases, so a "
                                 "smaller rank trains more parameters.", min=1, max=4096, basic=True,
                        label="Basis rank")
    alpha: float = setting(640.0, help="Scaling numerator: the update is scaled by alpha / rank (the paper's "
                                       "default is 20 × rank).", min=0.0, max=100000.0)
    sparse: bool = setting(False, help="Use sparse ternary random bases (faster, as in the paper's sparse "
                                       "variant).")
    dropout: float = dropout_setting()
    projection_seed: int = setting(0, help="Seed of the random bases.", min=0, max=2**31 - 1)
    target_modules: str = target_modules_setting()


PRESETS = presets(quick=(0.001, {"rank": 32}),
                  balanced=(0.0005, {"rank": 32}),
                  thorough=(0.0002, {"rank": 16, "alpha": 320}))


def prepare(model, params: RandloraParams, context=None):
    from peft import RandLoraConfig, get_peft_model

    config = RandLoraConfig(r=params.rank, randlora_alpha=params.alpha, sparse=params.sparse,
                            randlora_dropout=params.dropout, projection_prng_key=params.projection_seed,
                            save_projection=True, target_modules=targets(params.target_modules),
                            task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: RandloraParams, model_config, task: str) -> dict[str, str]:
    return rank_problems(prepare, params, model_config, task, rank=params.rank, field="rank")
