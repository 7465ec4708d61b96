"""bitsandbytes 4-bit NF4 with double quantization (QLoRA's format), bf16
compute. GPU only: on a CPU, bitsandbytes' NF4 ``state_dict()`` corrupts
the model (FIELD-NOTES), so saving is never attempted there."""

from __future__ import annotations

from pathlib import Path

from tuning.quantize import bnb_8bit
from tuning.quantize.common import LOAD_PATH, SchemeContext

FORMAT = "safetensors (bitsandbytes nf4)"
HOW_TO_LOAD = (f'AutoModelForCausalLM.from_pretrained("{LOAD_PATH}", device_map="cuda")  '
               f'# needs a CUDA GPU and `pip install bitsandbytes`')
unavailable_reason = bnb_8bit.unavailable_reason


def bnb_config():
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def run(source_dir: Path, out_dir: Path, ctx: SchemeContext) -> None:
    bnb_8bit.run(source_dir, out_dir, ctx, quant_config=bnb_config())


load = bnb_8bit.load
