"""GGUF files (f16, q8_0, q4_0, and the k-quant mixes q4_k_m, q5_k_m, q6_k) for llama.cpp, Ollama and LM Studio; the
writer is ``gguf_export``; the families it knows are in ``gguf_families``.

q8_0: blocks of 32 int8 weights with one f16 scale (8.5 bits a weight);
q4_0: blocks of 32 4-bit weights with one f16 scale (4.5 bits a weight).
transformers reads these files too (``gguf_file=``), dequantizing to
float, which is how the report and the tests reload them.
"""

from __future__ import annotations

from pathlib import Path

from tuning.quantize.common import LOAD_PATH, SchemeContext, missing_package
from tuning.quantize.gguf_export import export_gguf, gguf_filename

FORMAT = "gguf"


def how_to_load(gguf_type: str) -> str:
    return (f'AutoModelForCausalLM.from_pretrained("{LOAD_PATH}", gguf_file="{gguf_filename(gguf_type)}")  '
            f'# or: llama-cli -m {gguf_filename(gguf_type)}')


def unavailable_reason() -> str | None:
    return missing_package("gguf", "gguf")


def run(source_dir: Path, out_dir: Path, ctx: SchemeContext, *, gguf_type: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    export_gguf(source_dir, out_dir / gguf_filename(gguf_type), gguf_type=gguf_type, name=ctx.name,
                progress=ctx.progress, should_stop=ctx.should_stop, log=ctx.log)
    # config.json beside the file: the studio (and a user) can read the
    # architecture without parsing GGUF; transformers ignores it when gguf_file is given
    (out_dir / "config.json").write_bytes((source_dir / "config.json").read_bytes())


def load(out_dir: Path, *, gguf_type: str, trust_remote_code: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(out_dir, gguf_file=gguf_filename(gguf_type), dtype=torch.float32,
                                                trust_remote_code=trust_remote_code)
