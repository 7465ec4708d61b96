"""QLoRA: LoRA on a base model stored in 4-bit NormalFloat (Dettmers et al.,
2023, arXiv:2305.14314), through bitsandbytes and peft.

The base must be *loaded* quantized, so the training loop passes
``load_kwargs(params)`` to ``from_pretrained``; ``prepare`` then readies the
quantized model for training and adds LoRA. The saved adapter is a plain
LoRA adapter: it loads on the unquantized base with stock peft. Needs a
CUDA GPU and the bitsandbytes package on the worker.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import (TARGETS_HELP, dropout_setting, on_meta, peft_task_type, presets, rank_problems,
                                   targets)

NO_GPU = "QLoRA needs a CUDA GPU (bitsandbytes 4-bit); this worker has none"


@dataclass(frozen=True, kw_only=True)
class QloraParams:
    rank: int = setting(16, help="Rank r of the update matrices; higher trains more parameters.", min=1,
                        max=1024, basic=True, label="LoRA rank")
    alpha: float = setting(32.0, help="Scaling numerator: the update is scaled by alpha / rank.", min=0.0,
                           max=4096.0, basic=True, label="LoRA alpha")
    dropout: float = dropout_setting(0.05)
    target_modules: str = setting("all-linear", help=TARGETS_HELP + " The QLoRA paper adapts all linear layers.")
    double_quant: bool = setting(True, help="Also quantize the quantization constants (QLoRA's double "
                                            "quantization): about 0.4 bits per weight less memory.",
                                 label="Double quantization")
    compute_dtype: str = setting("bfloat16", help="Precision the 4-bit weights are expanded to for each matrix "
                                                  "product; float16 on GPUs without bfloat16.",
                                 choices=("bfloat16", "float16"), label="Compute precision")
    use_dora: bool = setting(False, help="QDoRA: DoRA (arXiv:2402.09353) on the quantized base.", label="DoRA")


PRESETS = presets(quick=(0.001, {"rank": 8, "alpha": 16}),
                  balanced=(0.0005, {"rank": 16, "alpha": 32}),
                  thorough=(0.0002, {"rank": 64, "alpha": 16}))


def load_kwargs(params: QloraParams) -> dict:
    import torch
    from transformers import BitsAndBytesConfig

    dtype = getattr(torch, params.compute_dtype)
    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=params.double_quant,
                                                      bnb_4bit_compute_dtype=dtype),
            "dtype": dtype}


def prepare(model, params: QloraParams, context=None):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if not on_meta(model):
        # Casts the unquantized parts (norms, embeddings) to fp32 for stable
        # training; gradient checkpointing is the training loop's choice.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(r=params.rank, lora_alpha=params.alpha, lora_dropout=params.dropout,
                        target_modules=targets(params.target_modules), use_dora=params.use_dora,
                        task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: QloraParams, model_config, task: str) -> dict[str, str]:
    import torch

    if not torch.cuda.is_available():
        return {"method": NO_GPU}
    if importlib.util.find_spec("bitsandbytes") is None:
        return {"method": "QLoRA needs the bitsandbytes package on the GPU worker (pip install bitsandbytes)"}
    return rank_problems(prepare, params, model_config, task, rank=params.rank, field="rank")
