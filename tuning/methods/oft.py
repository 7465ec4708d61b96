"""OFT: each weight is multiplied by a learned block-diagonal orthogonal
matrix, which keeps the angles between neurons (Qiu et al., 2023,
arXiv:2306.07280), through peft."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import adapted_layers, dry_run, peft_task_type, presets, target_modules_setting, targets


@dataclass(frozen=True, kw_only=True)
class OftParams:
    block_size: int = setting(32, help="Size of each orthogonal block; must divide the input size of every "
                                       "targeted layer. Larger blocks train more parameters.", min=2, max=4096,
                              basic=True, label="Block size")
    coft: bool = setting(False, help="Constrained OFT: keep the rotation within eps of the identity.",
                         label="Constrained (COFT)")
    eps: float = setting(6e-5, help="COFT only: how far the rotation may move from the identity.", min=0.0,
                         max=1.0)
    block_share: bool = setting(False, help="Share one orthogonal block across each layer's blocks (fewer "
                                            "parameters).")
    module_dropout: float = setting(0.0, help="Multiplicative dropout: probability of replacing a block by the "
                                              "identity in a training step.", min=0.0, max=0.9)
    target_modules: str = target_modules_setting()


PRESETS = presets(quick=(0.002, {"block_size": 32}),
                  balanced=(0.001, {"block_size": 32}),
                  thorough=(0.0005, {"block_size": 64}))


def prepare(model, params: OftParams, context=None):
    from peft import OFTConfig, get_peft_model

    config = OFTConfig(r=0, oft_block_size=params.block_size, coft=params.coft, eps=params.eps,
                       block_share=params.block_share, module_dropout=params.module_dropout,
                       target_modules=targets(params.target_modules),
                       task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: OftParams, model_config, task: str) -> dict[str, str]:
    model, problems = dry_run(prepare, params, model_config, task, blame="block_size")
    # peft would quietly shrink a block size that does not divide a layer.
    for name, fan_in, _ in adapted_layers(model) if model is not None else []:
        if fan_in % params.block_size:
            return {"block_size": f"must divide the input size of every targeted layer; {name} has {fan_in}"}
    return problems
