"""bitsandbytes LLM.int8(): 8-bit linear weights with outlier features kept
in 16 bits. Quantized and reloaded on a CUDA GPU (bitsandbytes' CPU backend
is not what the studio's workers run, and is not measured here)."""

from __future__ import annotations

from pathlib import Path

from tuning.quantize.common import LOAD_PATH, SchemeContext, cuda_reason, missing_package

FORMAT = "safetensors (bitsandbytes int8)"
HOW_TO_LOAD = (f'AutoModelForCausalLM.from_pretrained("{LOAD_PATH}", device_map="cuda")  '
               f'# needs a CUDA GPU and `pip install bitsandbytes`')


def unavailable_reason() -> str | None:
    return cuda_reason() or missing_package("bitsandbytes", "bitsandbytes")  # no GPU is the reason a CPU machine needs


def bnb_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def run(source_dir: Path, out_dir: Path, ctx: SchemeContext, *, quant_config=None) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    ctx.log("Quantizing linear weights while loading onto the GPU (bitsandbytes)")
    # the unquantized parts (embeddings, norms) in bf16 where the GPU has it: fp16 can overflow
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    model = AutoModelForCausalLM.from_pretrained(
        source_dir, dtype=dtype, use_safetensors=True, trust_remote_code=ctx.trust_remote_code,
        quantization_config=quant_config if quant_config is not None else bnb_config(),
        device_map={"": torch.cuda.current_device()})
    ctx.progress(1, 2, "steps")
    if ctx.should_stop():
        from tuning.quantize.common import Cancelled

        raise Cancelled
    model.save_pretrained(out_dir, safe_serialization=True)
    ctx.progress(2, 2, "steps")


def load(out_dir: Path, *, trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=trust_remote_code,
                                                device_map={"": torch.cuda.current_device()})
