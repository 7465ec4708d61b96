"""VeRA: one pair of frozen random low-rank matrices shared by every layer;
each layer trains only two scaling vectors (Kopiczko et al., 2023,
arXiv:2310.11454), through peft. The random pair is saved with the adapter,
so it reloads exactly."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import dropout_setting, peft_task_type, presets, refusals, target_modules_setting, targets


@dataclass(frozen=True, kw_only=True)
class VeraParams:
    rank: int = setting(256, help="Rank of the shared random matrices; costs memory, not trainable parameters "
                                  "(each layer trains rank + output-size values).", min=1, max=8192, basic=True,
                        label="Rank")
    d_initial: float = setting(0.1, help="Initial value of the rank-scaling vector d (the paper's d_init).",
                               min=0.0, max=10.0)
    dropout: float = dropout_setting()
    projection_seed: int = setting(0, help="Seed of the shared random matrices.", min=0, max=2**31 - 1)
    target_modules: str = target_modules_setting()


PRESETS = presets(quick=(0.01, {"rank": 256}), balanced=(0.005, {"rank": 256}), thorough=(0.004, {"rank": 1024}))


def prepare(model, params: VeraParams, context=None):
    from peft import VeraConfig, get_peft_model

    config = VeraConfig(r=params.rank, d_initial=params.d_initial, vera_dropout=params.dropout,
                        projection_prng_key=params.projection_seed, save_projection=True,
                        target_modules=targets(params.target_modules),
                        task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: VeraParams, model_config, task: str) -> dict[str, str]:
    return refusals(prepare, params, model_config, task, blame="target_modules")
