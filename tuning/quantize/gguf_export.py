"""GGUF export of Llama-family models (f16, q8_0, q4_0), for llama.cpp,
Ollama, LM Studio and transformers' ``gguf_file=`` loader.

Written with the ``gguf`` package's GGUFWriter in its streaming order:
every tensor's name, shape and type goes into the header first (shapes are
read from the safetensors headers, without loading weights), then each
tensor is loaded, converted and written on its own, so at most one tensor
is ever held in memory twice (as loaded and as converted).

What llama.cpp expects from a Hugging Face Llama checkpoint:
- tensor names from gguf's TensorNameMap for MODEL_ARCH.LLAMA;
- q_proj/k_proj rows reordered from Hugging Face's rotary layout (the
  two halves of each head's dimensions) to llama.cpp's (interleaved pairs);
- no ``output.weight`` when the embeddings are tied (llama.cpp reuses
  ``token_embd.weight``);
- 1-D tensors (norms) kept in f32; 2-D weights in the chosen type, except
  rows whose length is not a multiple of the 32-value block (then f16);
- a byte-level BPE ("gpt2") tokenizer: tokens in id order, token types,
  merges, special ids and the chat template.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tuning.errors import ModelError
from tuning.quantize.common import Cancelled

GGUF_TYPES = ("f16", "q8_0", "q4_0")
# llama.cpp's quantizer keeps the output head at more bits than a 4-bit file's
# other matrices (Q6_K; with tied embeddings the head is token_embd): an error
# there reaches every logit. The gguf package cannot write Q6_K, so it keeps Q8_0.
OUTPUT_TYPE = {"q4_0": "Q8_0"}  # file type -> the output head's GGML type


def _output_names(tied: bool) -> tuple[str, ...]:
    return ("token_embd.weight",) if tied else ("output.weight",)
SUPPORTED_MODEL_TYPES = ("llama",)


def check_gguf_source(config: dict) -> None:
    """Refuse what this exporter cannot write, from config.json alone."""
    model_type = config.get("model_type", "")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelError(f"GGUF export supports Llama-family models (model_type 'llama'); this model's model_type "
                         f"is '{model_type or 'missing'}'. Pick a safetensors or torchao scheme instead")
    rope = _rope(config)
    if rope.get("rope_type", "default") not in ("default", None):
        raise ModelError(f"GGUF export does not handle rope scaling type '{rope['rope_type']}' yet; pick a "
                         f"safetensors or torchao scheme instead")
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    if config.get("head_dim") not in (None, hidden // heads):
        raise ModelError(f"GGUF export needs head_dim == hidden_size / num_attention_heads (here "
                         f"{config['head_dim']} vs {hidden // heads})")


def _rope(config: dict) -> dict:
    # transformers 5 writes rope_parameters; older configs have rope_theta / rope_scaling at the top level
    rope = dict(config.get("rope_parameters") or {})
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    if config.get("rope_scaling"):
        rope["rope_type"] = config["rope_scaling"].get("rope_type") or config["rope_scaling"].get("type")
    return rope


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


def _pre_tokenizer_name(tokenizer_json: dict) -> str:
    """llama.cpp picks its pre-tokenizer regex by name. Byte-level BPE with
    GPT-2's regex is "gpt-2"; with digits split one by one first (SmolLM,
    StarCoder-style) it is "smollm"."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [part.get("type") for part in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    return "default"


def _add_tokenizer(writer, model_dir: Path, vocab_size: int, log: Callable[[str], None]) -> None:
    import gguf
    from transformers import AutoTokenizer

    tokenizer_file = model_dir / "tokenizer.json"
    if not tokenizer_file.exists():
        raise ModelError(f"GGUF export needs a fast tokenizer file (tokenizer.json) in {model_dir}")
    data = json.loads(tokenizer_file.read_text())
    if data.get("model", {}).get("type") != "BPE":
        raise ModelError(f"GGUF export handles byte-level BPE tokenizers only; this one is "
                         f"{data.get('model', {}).get('type')}")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for index in range(vocab_size):  # the embedding may have more rows than the tokenizer has tokens
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in data["model"].get("merges", [])]
    pre = _pre_tokenizer_name(data)
    if pre == "default":
        log("GGUF: unrecognised pre-tokenizer; llama.cpp will use its default regex, which may split text "
            "differently from the original tokenizer")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id")
        if token_id is not None:
            add(token_id)
    probe = tokenizer("a").input_ids
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_space_prefix(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)


def gguf_filename(gguf_type: str) -> str:
    return f"model-{gguf_type}.gguf"


def export_gguf(model_dir: str | Path, out_file: str | Path, *, gguf_type: str, name: str = "",
                progress: Callable[[int, int], None] = lambda done, total: None,
                should_stop: Callable[[], bool] = lambda: False,
                log: Callable[[str], None] = lambda message: None) -> Path:
    """Write ``model_dir`` (a Llama safetensors directory) to ``out_file``.

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
    n_layers, n_heads = config["num_hidden_layers"], config["num_attention_heads"]
    n_kv_heads = config.get("num_key_value_heads") or n_heads
    hidden, vocab_size = config["hidden_size"], config["vocab_size"]
    tied = bool(config.get("tie_word_embeddings", False))
    quant = {"f16": None, "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}[gguf_type]
    block = gguf.GGML_QUANT_SIZES[quant][0] if quant is not None else 0
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)

    # --- plan: every tensor's target name, shape and type, from the headers only
    plan = []  # (file, hf name, gguf name, shape, ggml type)
    for file in _weight_files(model_dir):
        with safe_open(file, framework="pt") as handle:
            for hf_name in handle.keys():
                if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
                    continue  # recomputed by llama.cpp / shared with token_embd when tied
                target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if target is None:
                    raise ModelError(f"GGUF export does not know where the tensor '{hf_name}' goes in a Llama "
                                     f"GGUF file")
                shape = tuple(handle.get_slice(hf_name).get_shape())
                if len(shape) == 1:
                    kind = gguf.GGMLQuantizationType.F32  # norms stay f32, as llama.cpp keeps them
                elif quant is not None and shape[-1] % block == 0:
                    kind = quant
                    if target in _output_names(tied) and gguf_type in OUTPUT_TYPE:
                        kind = gguf.GGMLQuantizationType[OUTPUT_TYPE[gguf_type]]
                else:
                    kind = gguf.GGMLQuantizationType.F16
                plan.append((file, hf_name, target, shape, kind))

    writer = gguf.GGUFWriter(out_file, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type("model")
    writer.add_name(name or config.get("_name_or_path") or model_dir.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_rope_dimension_count(hidden // n_heads)
    writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(vocab_size)
    writer.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                          "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[gguf_type])
    if quant is not None:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, model_dir, vocab_size, log)
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
            with safe_open(file, framework="pt") as handle:
                weight = handle.get_tensor(hf_name).to(torch.float32).numpy()
            if hf_name.endswith("q_proj.weight"):
                weight = _permute_rotary(weight, n_heads)
            elif hf_name.endswith("k_proj.weight"):
                weight = _permute_rotary(weight, n_kv_heads)
            if kind == gguf.GGMLQuantizationType.F32:
                data = np.ascontiguousarray(weight, dtype=np.float32)
            elif kind == gguf.GGMLQuantizationType.F16:
                data = np.ascontiguousarray(weight, dtype=np.float16)
            else:
                data = gguf.quants.quantize(weight, kind)
            writer.write_tensor_data(data)
            del weight, data
            progress(done + 1, len(plan))
    finally:
        writer.close()
    return out_file
