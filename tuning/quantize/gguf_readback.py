"""Read a GGUF file the exporter wrote back into the source model in memory.

The quantization report compares the written file with its source. It used
to reload the file through transformers' ``gguf_file=`` loader, which parses
the file twice (config, then weights), builds gguf's tensor-name table once
per tensor and constructs a second model: on the bundled 135M model that
took longer than writing the file. Here the file is parsed once with the
gguf package's reader, each tensor is dequantized with its vectorised numpy
dequantizer, the exporter's conventions are undone (names, llama.cpp's
rotary row order, Gemma's 1 + w norms) and the values are copied into the
model the report already holds. The numbers measured are those in the file;
that stock loaders read it is tested on its own (tests/core/test_gguf.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tuning.errors import ModelError
from tuning.quantize.common import Cancelled
from tuning.quantize.gguf_export import unpermute_rotary
from tuning.quantize.gguf_families import GGUF_FAMILIES


def load_gguf_into(model, gguf_path: Path, model_dir: Path, *,
                   progress: Callable[[int, int], None] = lambda done, total: None,
                   should_stop: Callable[[], bool] = lambda: False) -> None:
    """Replace ``model``'s weights (a model of ``model_dir``'s config, in float32)
    with the dequantized tensors of ``gguf_path``. Raises ModelError when a
    tensor of the file has no place in the model."""
    import gguf
    import torch

    config = json.loads((Path(model_dir) / "config.json").read_text())
    family = GGUF_FAMILIES[config["model_type"]]
    arch = {arch_name: arch for arch, arch_name in gguf.MODEL_ARCH_NAMES.items()}[family.arch]
    n_heads = config["num_attention_heads"]
    n_kv_heads = config.get("num_key_value_heads") or n_heads
    names = gguf.get_tensor_name_map(arch, config["num_hidden_layers"])
    params = dict(model.named_parameters())
    hf_name_of = {}
    for hf_name in params:
        target = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if target is not None:
            hf_name_of.setdefault(target, hf_name)  # tied embeddings: token_embd is the embedding's name
    reader = gguf.GGUFReader(gguf_path)
    tensors = [t for t in reader.tensors if t.name != gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"]
    loaded = set()
    with torch.no_grad():
        for done, tensor in enumerate(tensors, start=1):
            if should_stop():
                raise Cancelled
            hf_name = hf_name_of.get(tensor.name)
            if hf_name is None:
                raise ModelError(f"the GGUF tensor '{tensor.name}' has no place in a {family.label} model")
            weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            if family.permute_rotary and hf_name.endswith("q_proj.weight"):
                weight = unpermute_rotary(weight, n_heads)
            elif family.permute_rotary and hf_name.endswith("k_proj.weight"):
                weight = unpermute_rotary(weight, n_kv_heads)
            elif family.norm_plus_one and hf_name.endswith("norm.weight"):
                weight = weight - 1
            target = params[hf_name]
            if tuple(weight.shape) != tuple(target.shape):
                raise ModelError(f"the GGUF tensor '{tensor.name}' has shape {tuple(weight.shape)}; the model's "
                                 f"{hf_name} has {tuple(target.shape)}")
            target.copy_(torch.from_numpy(weight.copy()))
            loaded.add(hf_name)
            progress(done, len(tensors))
    if missing := sorted(set(params) - loaded):
        raise ModelError(f"the GGUF file has no tensor for {', '.join(missing[:3])}"
                         + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
