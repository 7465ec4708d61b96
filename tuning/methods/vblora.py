"""VB-LoRA: every low-rank matrix of every layer is assembled from the top-k
vectors of one small shared vector bank (Li et al., 2024, "VB-LoRA: Extreme
Parameter Efficient Fine-Tuning with Vector Banks", arXiv:2405.15179),
through peft."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import (dropout_setting, peft_task_type, presets, rank_problems, target_modules_setting,
                                   targets)


@dataclass(frozen=True, kw_only=True)
class VbloraParams:
    rank: int = setting(4, help="Rank of each assembled low-rank matrix pair.", min=1, max=512, basic=True,
                        label="Rank")
    num_vectors: int = setting(256, help="Vectors in the shared bank.", min=2, max=65536, basic=True,
                               label="Bank size")
    vector_length: int = setting(64, help="Length of each bank vector; must divide the input and output size of "
                                          "every targeted layer.", min=1, max=8192)
    topk: int = setting(2, help="Bank vectors mixed into each sub-vector (the paper uses 2).", min=1, max=64)
    dropout: float = dropout_setting()
    target_modules: str = target_modules_setting()


PRESETS = presets(quick=(0.002, {"rank": 4}),
                  balanced=(0.001, {"rank": 4}),
                  thorough=(0.001, {"rank": 8, "num_vectors": 512}))


def prepare(model, params: VbloraParams, context=None):
    from peft import VBLoRAConfig, get_peft_model

    config = VBLoRAConfig(r=params.rank, num_vectors=params.num_vectors, vector_length=params.vector_length,
                          topk=params.topk, vblora_dropout=params.dropout,
                          target_modules=targets(params.target_modules),
                          task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: VbloraParams, model_config, task: str) -> dict[str, str]:
    if params.topk > params.num_vectors:
        return {"topk": f"must be at most the bank size ({params.num_vectors})"}
    return rank_problems(prepare, params, model_config, task, rank=params.rank, field="rank", blame="vector_length")
