"""Which model families the GGUF writer handles, and how each differs.

One row per transformers ``model_type``, following the conventions of
llama.cpp's convert_hf_to_gguf.py for that family:

- ``arch``: the GGUF architecture name (``general.architecture``); Mistral
  is written as "llama", as llama.cpp does;
- ``permute_rotary``: llama.cpp's "llama" architecture rotates adjacent
  pairs, so the q/k rows of Llama and Mistral are reordered; Qwen, Gemma and
  Phi-3 use the NeoX layout, as Hugging Face stores it, and are not;
- ``norm_plus_one``: Gemma stores each RMSNorm weight as w - 1 (it computes
  x * (1 + w)); GGUF stores w;
- ``metadata``: the family's own keys besides the common ones.

Pure data and config reading: the web process asks ``gguf_refusal`` before
queueing a job, without importing torch or gguf.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GGUFFamily:
    label: str
    arch: str
    permute_rotary: bool = False
    norm_plus_one: bool = False
    metadata: tuple[str, ...] = ()  # extra keys: see gguf_export._family_metadata
    rope_types: tuple[str, ...] = ("default",)  # rope scalings the writer records faithfully


GGUF_FAMILIES: dict[str, GGUFFamily] = {
    # Llama 3.1+ scale rope with "llama3": llama.cpp reads the per-frequency factors from a rope_freqs tensor
    "llama": GGUFFamily("Llama", "llama", permute_rotary=True, metadata=("vocab_size", "rope_dimension_count"),
                        rope_types=("default", "llama3")),
    "mistral": GGUFFamily("Mistral", "llama", permute_rotary=True, metadata=("vocab_size", "rope_dimension_count")),
    "qwen2": GGUFFamily("Qwen2 / Qwen2.5", "qwen2"),
    "qwen3": GGUFFamily("Qwen3", "qwen3", metadata=("head_dim",)),
    "gemma2": GGUFFamily("Gemma 2", "gemma2", norm_plus_one=True,
                         metadata=("head_dim", "softcapping", "sliding_window")),
    "gemma3_text": GGUFFamily("Gemma 3 (text)", "gemma3", norm_plus_one=True, metadata=("head_dim", "sliding_window")),
    "phi3": GGUFFamily("Phi-3", "phi3", metadata=("rope_dimension_count", "original_context", "sliding_window")),
}


def rope_settings(config: dict) -> dict:
    """The rope settings of a config.json: transformers 5 writes
    ``rope_parameters`` (per layer type for Gemma 3); older configs have
    ``rope_theta``/``rope_scaling`` at the top level."""
    rope = dict(config.get("rope_parameters") or {})
    if "full_attention" in rope:  # Gemma 3: the global layers' rope is the model's
        rope = dict(rope["full_attention"])
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    if config.get("rope_scaling"):
        rope["rope_type"] = config["rope_scaling"].get("rope_type") or config["rope_scaling"].get("type")
    return rope


def gguf_refusal(config: dict) -> str | None:
    """Why this model cannot be written to GGUF (None when it can), from
    config.json alone: an unknown family, a rope scaling the writer does not
    record, a head size the family's layout cannot hold."""
    model_type = config.get("model_type", "")
    family = GGUF_FAMILIES.get(model_type)
    if family is None:
        known = ", ".join(f"{f.label} ({name})" for name, f in GGUF_FAMILIES.items())
        return (f"GGUF export supports {known}; this model's model_type is '{model_type or 'missing'}'. "
                f"Pick a safetensors or torchao scheme instead")
    rope_type = rope_settings(config).get("rope_type") or "default"
    if rope_type not in family.rope_types:
        return (f"GGUF export of {family.label} does not handle rope scaling type '{rope_type}' yet; pick a "
                f"safetensors or torchao scheme instead")
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    if family.permute_rotary and config.get("head_dim") not in (None, hidden // heads):
        return (f"GGUF export of {family.label} needs head_dim == hidden_size / num_attention_heads (here "
                f"{config['head_dim']} vs {hidden // heads})")
    if model_type == "gemma3_text" and config.get("layer_types"):
        # llama.cpp makes every sixth Gemma 3 layer global and the others sliding-window; GGUF cannot say otherwise
        expected = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                    for i in range(len(config["layer_types"]))]
        if config["layer_types"] != expected:
            return ("GGUF export of Gemma 3 needs every sixth layer to be global (full attention), as llama.cpp "
                    "assumes; this model's layer_types differ")
    return None
