"""Plain safetensors in fp16 or bf16: half the size of fp32, loadable
everywhere. bf16 keeps fp32's range (safe for any model); fp16 has more
precision but overflows above 65504, which some models' activations reach."""

from __future__ import annotations

from pathlib import Path

from tuning.quantize.common import LOAD_PATH, SchemeContext

FORMAT = "safetensors"
HOW_TO_LOAD = f'AutoModelForCausalLM.from_pretrained("{LOAD_PATH}", dtype="auto")'


def unavailable_reason() -> str | None:
    return None


def run(source_dir: Path, out_dir: Path, ctx: SchemeContext, *, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    target = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    # loaded straight in the target dtype: one copy of the weights in memory
    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=target, use_safetensors=True,
                                                 trust_remote_code=ctx.trust_remote_code)
    ctx.progress(1, 2, "steps")
    if ctx.should_stop():
        from tuning.quantize.common import Cancelled

        raise Cancelled
    model.save_pretrained(out_dir, safe_serialization=True)
    ctx.progress(2, 2, "steps")


def load(out_dir: Path, *, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(out_dir, dtype="auto", trust_remote_code=trust_remote_code)
