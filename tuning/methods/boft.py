"""BOFT: orthogonal fine-tuning whose rotations are products of sparse
butterfly factors, dense rotations from few parameters (Liu et al., 2023,
"Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization",
arXiv:2311.06243), through peft."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import peft_task_type, presets, refusals, target_modules_setting, targets


@dataclass(frozen=True, kw_only=True)
class BoftParams:
    block_size: int = setting(8, help="Size of each orthogonal block; must divide the input size of every "
                                      "targeted layer.", min=2, max=4096, basic=True, label="Block size")
    butterfly_factor: int = setting(1, help="Number of butterfly factors; more factors make each rotation "
                                            "denser (1 is plain block-diagonal OFT).", min=1, max=16)
    dropout: float = setting(0.0, help="Multiplicative dropout: probability of replacing a block by the "
                                       "identity in a training step.", min=0.0, max=0.9)
    target_modules: str = target_modules_setting()


PRESETS = presets(quick=(0.002, {"block_size": 8}),
                  balanced=(0.001, {"block_size": 8, "butterfly_factor": 2}),
                  thorough=(0.0005, {"block_size": 16, "butterfly_factor": 2}))


def prepare(model, params: BoftParams, context=None):
    from peft import BOFTConfig, get_peft_model

    config = BOFTConfig(boft_block_size=params.block_size, boft_n_butterfly_factor=params.butterfly_factor,
                        boft_dropout=params.dropout, target_modules=targets(params.target_modules),
                        task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: BoftParams, model_config, task: str) -> dict[str, str]:
    return refusals(prepare, params, model_config, task, blame="block_size")
