"""int8 weight-only quantization with torchao, for CPUs and GPUs.

Linear weights become int8 with one scale per output row; activations stay
in the model's dtype. transformers quantizes while loading
(``TorchAoConfig(Int8WeightOnlyConfig())``), saves the torchao tensors in
safetensors and reloads them with a plain ``from_pretrained`` (torchao must
be installed where the model is loaded). Embeddings stay unquantized.
"""

from __future__ import annotations

from pathlib import Path

from tuning.quantize.common import LOAD_PATH, SchemeContext, missing_package

FORMAT = "safetensors (torchao int8)"
HOW_TO_LOAD = (f'AutoModelForCausalLM.from_pretrained("{LOAD_PATH}")  # needs `pip install torchao`')


def unavailable_reason() -> str | None:
    return missing_package("torchao", "torchao")


def torchao_config():
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def run(source_dir: Path, out_dir: Path, ctx: SchemeContext, *, quant_config=None) -> None:
    from transformers import AutoModelForCausalLM, TorchAoConfig

    ctx.log("Quantizing linear weights while loading (torchao)")
    model = AutoModelForCausalLM.from_pretrained(
        source_dir, dtype="auto", use_safetensors=True, trust_remote_code=ctx.trust_remote_code,
        quantization_config=TorchAoConfig(quant_config if quant_config is not None else torchao_config()))
    ctx.progress(1, 2, "steps")
    if ctx.should_stop():
        from tuning.quantize.common import Cancelled

        raise Cancelled
    model.save_pretrained(out_dir, safe_serialization=True)
    ctx.progress(2, 2, "steps")


def load(out_dir: Path, *, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=trust_remote_code)
