"""int4 weight-only quantization with torchao that runs on a CPU.

torchao's ``Int4WeightOnlyConfig`` needs CUDA (or XPU/NPU) kernels in every
packing format, so on a CPU this uses ``IntxWeightOnlyConfig`` with
``torch.int4`` values, one symmetric scale per group of 32 weights. Its
portable packing ("unpacked_to_int8") keeps each 4-bit value in an int8
container: the file is about as large as int8's, and the gain is int4's
grid (for a later repacking into llama.cpp or a GPU kernel), not size. For
a CPU model that is 4-bit on disk and in memory, use GGUF q4_0.
"""

from __future__ import annotations

from pathlib import Path

from tuning.quantize import torchao_int8
from tuning.quantize.common import LOAD_PATH, SchemeContext, missing_package

FORMAT = "safetensors (torchao intx int4, stored unpacked in int8)"
HOW_TO_LOAD = (f'AutoModelForCausalLM.from_pretrained("{LOAD_PATH}")  # needs `pip install torchao`')
GROUP_SIZE = 32  # weights per scale; rows must divide by it (hidden sizes do)


def unavailable_reason() -> str | None:
    return missing_package("torchao", "torchao")


def torchao_config():
    import torch
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(GROUP_SIZE))


def run(source_dir: Path, out_dir: Path, ctx: SchemeContext) -> None:
    torchao_int8.run(source_dir, out_dir, ctx, quant_config=torchao_config())


load = torchao_int8.load
