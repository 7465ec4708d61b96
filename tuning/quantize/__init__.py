"""Quantization and export schemes: one file per scheme (or format), one row here.

A scheme module provides ``unavailable_reason()`` (None, or why it cannot
run on this machine: no CUDA GPU, a package not installed),
``run(source_dir, out_dir, ctx)`` which writes the weights (and whatever
the format needs to load) from a plain safetensors model directory, and
``load(out_dir)`` which reloads the output with the stock library, the way
a user would. ``run_quantize`` (tuning.quantize.run) adds the tokenizer,
chat template, report and model card around it.

Nothing here imports torch at import time: the web process reads this
table to draw the form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from tuning.quantize import (bnb_8bit, bnb_nf4, compeft, delta_come, gguf_file, safetensors_cast, torchao_int4,
                             torchao_int8)
from tuning.quantize.gguf_families import GGUF_FAMILIES, gguf_refusal


@dataclass(frozen=True)
class QuantScheme:
    name: str
    label: str
    description: str  # one line, shown in the UI
    needs_gpu: bool
    unavailable_reason: Callable[[], str | None]
    run: Callable[[Path, Path, Any], None]
    load: Callable[..., Any]  # load(out_dir, trust_remote_code=False) -> model
    format: str  # what the output holds
    how_to_load: str  # one line of Python shown to users
    # Why a model cannot be written in this format, from its config.json (None: it can); GGUF knows some families
    model_refusal: Callable[[dict], str | None] = lambda config: None
    families: tuple[str, ...] = ()  # the families the format is limited to (labels), () when any
    gguf_file: str = ""  # the file inside the output directory, for GGUF schemes
    # Delta schemes compress a fine-tune's change from its base: they need the base model, read the source as
    # it is (an adapter stays an adapter) and write a packed change beside what loads (tuning/quantize/delta.py)
    delta: bool = False
    check_params: Callable[[dict], dict] = lambda params: _no_params(params)  # scheme_params -> with defaults
    paper: str = ""
    # name -> {"settings": scheme_params, "trade": what it gives up for what}, offered by the quantize form
    presets: dict | None = None


def _no_params(params: dict) -> dict:
    from tuning.quantize.delta import read_params

    return read_params(params, {})


def _gguf(gguf_type: str, label: str, description: str) -> QuantScheme:
    return QuantScheme(name=f"gguf_{gguf_type}", label=label, description=description, needs_gpu=False,
                       unavailable_reason=gguf_file.unavailable_reason,
                       run=partial(gguf_file.run, gguf_type=gguf_type),
                       load=partial(gguf_file.load, gguf_type=gguf_type), format=gguf_file.FORMAT,
                       how_to_load=gguf_file.how_to_load(gguf_type), model_refusal=gguf_refusal,
                       families=tuple(dict.fromkeys(family.label for family in GGUF_FAMILIES.values())),
                       gguf_file=gguf_file.gguf_filename(gguf_type))


def _cast(dtype: str, label: str, description: str) -> QuantScheme:
    return QuantScheme(name=f"safetensors_{dtype}", label=label, description=description, needs_gpu=False,
                       unavailable_reason=safetensors_cast.unavailable_reason,
                       run=partial(safetensors_cast.run, dtype=dtype), load=safetensors_cast.load,
                       format=safetensors_cast.FORMAT, how_to_load=safetensors_cast.HOW_TO_LOAD)


def _module(module, *, name: str, label: str, description: str, needs_gpu: bool) -> QuantScheme:
    return QuantScheme(name=name, label=label, description=description, needs_gpu=needs_gpu,
                       unavailable_reason=module.unavailable_reason, run=module.run, load=module.load,
                       format=module.FORMAT, how_to_load=module.HOW_TO_LOAD)


def _delta(module, *, name: str, label: str, description: str) -> QuantScheme:
    return dataclasses.replace(_module(module, name=name, label=label, description=description, needs_gpu=False),
                               delta=True, check_params=module.check_params, paper=module.PAPER,
                               presets=getattr(module, "PRESETS", None))


QUANT_SCHEMES: dict[str, QuantScheme] = {
    scheme.name: scheme
    for scheme in (
        _module(torchao_int8, name="torchao_int8", label="int8 weight-only (torchao)", needs_gpu=False,
                description="Linear weights in int8 with per-row scales; runs on CPUs and GPUs, reloads in "
                            "transformers with torchao installed."),
        _module(torchao_int4, name="torchao_int4", label="int4 weight-only (torchao, CPU)", needs_gpu=False,
                description="Linear weights on a 4-bit grid (groups of 32) that run on a CPU; stored in int8 "
                            "containers, so no smaller than int8 on disk. For small 4-bit files use GGUF q4_0."),
        _module(bnb_8bit, name="bnb_int8", label="8-bit (bitsandbytes)", needs_gpu=True,
                description="LLM.int8() linear layers with 16-bit outliers, for serving on CUDA GPUs."),
        _module(bnb_nf4, name="bnb_nf4", label="4-bit NF4 (bitsandbytes)", needs_gpu=True,
                description="4-bit NormalFloat weights with double quantization (QLoRA's format), for CUDA GPUs."),
        _gguf("f16", "GGUF f16", "Unquantized 16-bit GGUF for llama.cpp, Ollama and LM Studio."),
        _gguf("q8_0", "GGUF q8_0", "8-bit GGUF (8.5 bits a weight), nearly lossless, for llama.cpp, Ollama and "
                                   "LM Studio."),
        _gguf("q4_0", "GGUF q4_0", "4-bit GGUF (4.5 bits a weight), the small CPU format, for llama.cpp, Ollama "
                                   "and LM Studio."),
        _gguf("q4_k_m", "GGUF Q4_K_M", "llama.cpp's usual 4-bit k-quant mix (about 4.9 bits a weight): Q4_K with "
                                       "Q6_K for the output and some attn_v/ffn_down; for llama.cpp, Ollama and "
                                       "LM Studio."),
        _gguf("q5_k_m", "GGUF Q5_K_M", "5-bit k-quant mix (about 5.7 bits a weight): Q5_K with Q6_K where llama.cpp "
                                       "puts more bits; for llama.cpp, Ollama and LM Studio."),
        _gguf("q6_k", "GGUF Q6_K", "6-bit k-quant (6.56 bits a weight), nearly lossless; for llama.cpp, Ollama and "
                                   "LM Studio."),
        _cast("fp16", "Safetensors fp16", "The whole model in float16: half of fp32, loads everywhere."),
        _cast("bf16", "Safetensors bf16", "The whole model in bfloat16: half of fp32 with fp32's range."),
        _delta(compeft, name="compeft", label="ComPEFT (sparse ternary change)",
               description="Keeps the largest entries of a fine-tune's change from its base (an adapter's weights, "
                           "or a full fine-tune's delta) as their sign times one scale per tensor; packed about 1/16 "
                           "of fp16 at density 0.1. Needs the base model."),
        _delta(delta_come, name="delta_come", label="Delta-CoMe (mixed-precision low-rank change)",
               description="Splits each weight matrix's change from the base by SVD and keeps its singular vectors "
                           "at 8, 3 and 2 bits, more bits for larger singular values; an adapter stays an adapter "
                           "of the kept rank. Needs the base model."),
    )
}


def describe(scheme: QuantScheme | str, *, check_machine: bool = True) -> dict:
    """The catalogue entry of a scheme as plain data (CLI, API, UI).

    ``available``/``unavailable_reason`` describe this machine; the web
    process passes ``check_machine=False`` (both None): the check imports
    torch, and the web machine is not where the job runs."""
    if isinstance(scheme, str):
        scheme = QUANT_SCHEMES[scheme]
    reason = scheme.unavailable_reason() if check_machine else None
    return {"name": scheme.name, "label": scheme.label, "description": scheme.description,
            "needs_gpu": scheme.needs_gpu, "format": scheme.format, "how_to_load": scheme.how_to_load,
            "families": list(scheme.families), "available": (reason is None) if check_machine else None,
            "unavailable_reason": reason, "delta": scheme.delta, "paper": scheme.paper,
            "params": scheme.check_params({}), "presets": scheme.presets or {}}


def export_support(model_config: dict | str) -> dict[str, str | None]:
    """For every scheme, None when it can write this model, else why not:
    what a form shows before queueing. ``model_config`` is the model's
    config.json as a dict (or just its model_type). Reads no weights and
    imports no torch; whether this machine can run a scheme (a CUDA GPU, a
    package) is ``describe``'s ``unavailable_reason``."""
    config = {"model_type": model_config} if isinstance(model_config, str) else model_config
    if isinstance(model_config, str) and model_config in GGUF_FAMILIES:
        return {name: None for name in QUANT_SCHEMES}  # the family alone: no shape to check
    return {name: scheme.model_refusal(config) for name, scheme in QUANT_SCHEMES.items()}
