"""GGUF export (f16, q8_0, q4_0, and the k-quant mixes q4_k_m, q5_k_m, q6_k
of ``gguf_kquants``) of the families in ``gguf_families`` (Llama, Mistral,
Qwen2/2.5, Qwen3, Gemma 2, Gemma 3, Phi-3), for llama.cpp, Ollama, LM Studio
and transformers' ``gguf_file=`` loader.

Written with the ``gguf`` package's GGUFWriter in its streaming order:
every tensor's name, shape and type goes into the header first (shapes are
read from the safetensors headers, without loading weights), then each
tensor is loaded, converted and written on its own, so at most one tensor
is ever held in memory twice (as loaded and as converted).

What llama.cpp expects from a Hugging Face checkpoint (its
convert_hf_to_gguf.py conventions):
- tensor names from gguf's TensorNameMap for the family's architecture;
- for the "llama" architecture, q_proj/k_proj rows reordered from Hugging
  Face's rotary layout (the two halves of each head's dimensions) to
  llama.cpp's (interleaved pairs); Gemma's norm weights stored as 1 + w;
- no ``output.weight`` when the embeddings are tied (llama.cpp reuses
  ``token_embd.weight``);
- 1-D tensors (norms, biases) kept in f32; 2-D weights in the chosen type,
  except rows whose length is not a multiple of the 32-value block (then f16);
- the tokenizer (``gguf_vocab``): byte-level BPE or SentencePiece-style.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tuning.errors import ModelError
from tuning.quantize.common import Cancelled
from tuning.quantize.gguf_families import GGUF_FAMILIES, gguf_refusal, rope_settings
from tuning.quantize.gguf_vocab import add_tokenizer

GGUF_TYPES = ("f16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k")
# llama.cpp's quantizer keeps the output head at more bits than a 4-bit file's
# other matrices (Q6_K; with tied embeddings the head is token_embd): an error
# there reaches every logit. q4_0 keeps Q8_0 (as it did before the k-quant writers); the k-quant files follow
# llama.cpp's own mix (gguf_kquants.k_quant_type), Q6_K included.
OUTPUT_TYPE = {"q4_0": "Q8_0"}  # file type -> the output head's GGML type
FILE_TYPES = {"f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0", "q4_k_m": "MOSTLY_Q4_K_M",
              "q5_k_m": "MOSTLY_Q5_K_M", "q6_k": "MOSTLY_Q6_K"}


def _output_names(tied: bool) -> tuple[str, ...]:
    return ("token_embd.weight",) if tied else ("output.weight",)


def check_gguf_source(config: dict) -> None:
    """Refuse what this exporter cannot write, from config.json alone."""
    reason = gguf_refusal(config)
    if reason:
        raise ModelError(reason)


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [model_dir / name for name in names]
    single = model_dir / "model.safetensors"
    if not single.exists():
        raise ModelError(f"no safetensors weights in {model_dir} (model.safetensors or an index file)")
    return [single]


def _permute_rotary(weight, n_heads: int):
    """Hugging Face keeps each head's rotary dimensions as two halves;
    llama.cpp rotates adjacent pairs. Reorder the output rows to match."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def unpermute_rotary(weight, n_heads: int):
    """The inverse of ``_permute_rotary``: llama.cpp's row order back to Hugging Face's."""
    rows = weight.shape[0]
    return (weight.reshape(n_heads, rows // n_heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _family_metadata(writer, family, config: dict) -> None:
    """The keys llama.cpp reads for this family besides the common ones."""
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads
    for key in family.metadata:
        if key == "vocab_size":
            writer.add_vocab_size(config["vocab_size"])
        elif key == "rope_dimension_count":
            partial = rope_settings(config).get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
            writer.add_rope_dimension_count(int(head_dim * partial))
        elif key == "head_dim":
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        elif key == "softcapping":
            for value, add in ((config.get("attn_logit_softcapping"), writer.add_attn_logit_softcapping),
                               (config.get("final_logit_softcapping"), writer.add_final_logit_softcapping)):
                if value is not None:
                    add(float(value))
        elif key == "sliding_window" and config.get("sliding_window"):
            writer.add_sliding_window(int(config["sliding_window"]))
        elif key == "original_context":
            writer.add_rope_scaling_orig_ctx_len(
                int(config.get("original_max_position_embeddings") or config["max_position_embeddings"]))


def _llama3_rope_factors(config: dict):
    """What llama.cpp divides each rope frequency by for Llama 3.1+'s "llama3"
    scaling: the plain frequencies over the scaled ones, both from
    transformers' own rope functions, so the file rotates as the source does."""
    import numpy as np
    import torch
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    settings = {key: value for key, value in config.items() if key != "model_type"}
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](AutoConfig.for_model(config["model_type"], **settings), "cpu")
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    theta = float(rope_settings(config)["rope_theta"])
    plain = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    return np.ascontiguousarray((plain / scaled.to(torch.float64)).numpy(), dtype=np.float32)


def gguf_filename(gguf_type: str) -> str:
    return f"model-{gguf_type}.gguf"


def export_gguf(model_dir: str | Path, out_file: str | Path, *, gguf_type: str, name: str = "",
                progress: Callable[[int, int], None] = lambda done, total: None,
                should_stop: Callable[[], bool] = lambda: False,
                log: Callable[[str], None] = lambda message: None) -> Path:
    """Write ``model_dir`` (a safetensors directory of a family in GGUF_FAMILIES) to ``out_file``.

    ``progress(done, total)`` is called after every tensor written;
    ``should_stop()`` is checked before each one (raises Cancelled; the
    caller removes the partial file)."""
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    if gguf_type not in GGUF_TYPES:
        raise ValueError(f"unknown GGUF type {gguf_type!r}")
    model_dir, out_file = Path(model_dir), Path(out_file)
    config = json.loads((model_dir / "config.json").read_text())
    check_gguf_source(config)
    family = GGUF_FAMILIES[config["model_type"]]
    arch = {arch_name: arch for arch, arch_name in gguf.MODEL_ARCH_NAMES.items()}[family.arch]
    n_layers, n_heads = config["num_hidden_layers"], config["num_attention_heads"]
    n_kv_heads = config.get("num_key_value_heads") or n_heads
    hidden, vocab_size = config["hidden_size"], config["vocab_size"]
    tied = bool(config.get("tie_word_embeddings", False))
    from tuning.quantize import gguf_kquants

    k_mix = gguf_type in gguf_kquants.K_MIXES
    quant = {"f16": None, "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}.get(
        gguf_type, gguf.GGMLQuantizationType.Q8_0)  # the k mixes: blocks of 32 at least (their fallbacks)
    block = gguf.GGML_QUANT_SIZES[quant][0] if quant is not None else 0
    names = gguf.get_tensor_name_map(arch, n_layers)

    # --- plan: every tensor's target name, shape and type, from the headers only
    plan = []  # (file, hf name, gguf name, shape, ggml type)
    for file in _weight_files(model_dir):
        with safe_open(file, framework="pt") as handle:
            for hf_name in handle.keys():
                if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
                    continue  # recomputed by llama.cpp / shared with token_embd when tied
                target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if target is None:
                    raise ModelError(f"GGUF export does not know where the tensor '{hf_name}' goes in a "
                                     f"{family.label} GGUF file")
                shape = tuple(handle.get_slice(hf_name).get_shape())
                if len(shape) == 1:
                    kind = gguf.GGMLQuantizationType.F32  # norms and biases stay f32, as llama.cpp keeps them
                elif k_mix and shape[-1] % block == 0:
                    kind = gguf.GGMLQuantizationType[gguf_kquants.k_quant_type(gguf_type, target, shape, n_layers,
                                                                                 _output_names(tied))]
                elif quant is not None and shape[-1] % block == 0:
                    kind = quant
                    if target in _output_names(tied) and gguf_type in OUTPUT_TYPE:
                        kind = gguf.GGMLQuantizationType[OUTPUT_TYPE[gguf_type]]
                else:
                    kind = gguf.GGMLQuantizationType.F16
                plan.append((file, hf_name, target, shape, kind))

    if rope_settings(config).get("rope_type") == "llama3":
        head_dim = config.get("head_dim") or hidden // n_heads
        plan.append((None, "", gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", (head_dim // 2,),
                     gguf.GGMLQuantizationType.F32))

    writer = gguf.GGUFWriter(out_file, family.arch)
    writer.add_type("model")
    writer.add_name(name or config.get("_name_or_path") or model_dir.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_rope_freq_base(float(rope_settings(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    _family_metadata(writer, family, config)
    writer.add_file_type(gguf.LlamaFileType[FILE_TYPES[gguf_type]])
    if quant is not None:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, model_dir, vocab_size, log)
    for _, _, target, shape, kind in plan:
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor_info(target, shape, np.dtype(np.float32), int(np.prod(shape)) * 4)
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor_info(target, shape, np.dtype(np.float16), int(np.prod(shape)) * 2)
        else:
            nbytes = int(np.prod(gguf.quant_shape_to_byte_shape(shape, kind)))
            writer.add_tensor_info(target, shape, np.dtype(np.float32), nbytes, raw_dtype=kind)

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, (file, hf_name, target, shape, kind) in enumerate(plan):
            if should_stop():
                raise Cancelled
            if file is None:
                weight = _llama3_rope_factors(config)
            else:
                with safe_open(file, framework="pt") as handle:
                    weight = handle.get_tensor(hf_name).to(torch.float32).numpy()
            if family.permute_rotary and hf_name.endswith("q_proj.weight"):
                weight = _permute_rotary(weight, n_heads)
            elif family.permute_rotary and hf_name.endswith("k_proj.weight"):
                weight = _permute_rotary(weight, n_kv_heads)
            elif family.norm_plus_one and hf_name.endswith("norm.weight"):
                weight = weight + 1  # Gemma computes x * (1 + w); GGUF stores the factor itself
            if kind == gguf.GGMLQuantizationType.F32:
                data = np.ascontiguousarray(weight, dtype=np.float32)
            elif kind == gguf.GGMLQuantizationType.F16:
                data = np.ascontiguousarray(weight, dtype=np.float16)
            elif kind.name in gguf_kquants.QUANTIZERS:
                data = gguf_kquants.quantize(weight, kind.name)  # gguf 0.19 reads k-quants but cannot write them
            else:
                data = gguf.quants.quantize(weight, kind)
            writer.write_tensor_data(data)
            del weight, data
            progress(done + 1, len(plan))
    finally:
        writer.close()
    return out_file
