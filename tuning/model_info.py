"""What a model directory is, read from its files without loading it:
architecture, parameter count (from the safetensors headers), context
length, dtype, size on disk, chat template, licence. The Models page shows
it; ``check_architecture`` refuses what the studio cannot train."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tuning.errors import TuningError
from tuning.merge.tensors import read_header  # headers only: no torch

# Families the studio's tests take through training, adapters, folding, merging and export
# (tests/core/test_architectures.py); other causal LMs that transformers knows also train. Gemma 3's
# multimodal checkpoints (gemma3) are not among them: only its text model (gemma3_text) is.
PROVEN_FAMILIES = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral",
                   "gemma2": "Gemma 2", "gemma3_text": "Gemma 3", "phi3": "Phi-3"}


def _causal_lm_types() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def multimodal_refusal(architectures: list[str]) -> str:
    """Why an image-text checkpoint (a config with a vision tower) is refused, and what to use instead."""
    name = architectures[0] if architectures else "this model"
    return (f"{name} is an image-text model (its config has a vision tower); the studio trains text models: use "
            f"the family's text-only checkpoint (for Gemma 3, gemma-3-1b or a text-only conversion)")


def check_architecture(config: dict, *, trust_remote_code: bool = False) -> None:
    """Raise TuningError when the studio cannot train a model of this config."""
    model_type = config.get("model_type", "")
    if config.get("auto_map") and not trust_remote_code:
        raise TuningError(f"this model's code lives in its repository (config.json has auto_map for "
                          f"{', '.join(sorted(config['auto_map']))}); the studio does not run a repository's code "
                          f"unless an admin sets TRUST_REMOTE_CODE")
    if config.get("vision_config") is not None:
        raise TuningError(multimodal_refusal(config.get("architectures") or []))
    if model_type not in _causal_lm_types():
        known = ", ".join(sorted(set(PROVEN_FAMILIES.values())))
        raise TuningError(f"architecture '{model_type or 'unknown'}' ({', '.join(config.get('architectures') or [])}) "
                          f"is not a causal language model this version of transformers can load; the studio "
                          f"supports {known} and other causal LMs")


def _safetensors_parameters(files: list[Path]) -> tuple[int, str]:
    """Parameter count and the most common dtype, from the files' JSON headers only."""
    total, dtypes = 0, {}
    for path in files:
        for dtype, shape in read_header(path).values():
            count = 1
            for dim in shape:
                count *= dim
            total += count
            dtypes[dtype] = dtypes.get(dtype, 0) + count
    return total, max(dtypes, key=dtypes.get) if dtypes else ""


def _licence(directory: Path) -> str:
    readme = directory / "README.md"
    if not readme.is_file():
        return ""
    front = re.match(r"^---\n(.*?)\n---", readme.read_text(errors="replace")[:20000], re.S)
    found = re.search(r"^license:\s*(\S+)", front.group(1), re.M) if front else None
    return found.group(1).strip("'\"") if found else ""


def describe_model_dir(directory: Path) -> dict:
    """The Models page's facts about a model directory (a dict of plain values)."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    text = config.get("text_config") or config  # multimodal configs keep the language model's own
    model_type = config.get("model_type", "")
    files = sorted(directory.glob("*.safetensors"))
    parameters, dtype = _safetensors_parameters(files) if files else (0, "")
    tokenizer_config = directory / "tokenizer_config.json"
    template = ((directory / "chat_template.jinja").is_file()
                or (tokenizer_config.is_file() and bool(json.loads(tokenizer_config.read_text()).get("chat_template"))))
    return {
        "model_type": model_type,
        "family": PROVEN_FAMILIES.get(model_type, model_type),
        "proven": model_type in PROVEN_FAMILIES,
        "architecture": (config.get("architectures") or [""])[0],
        "parameters": parameters,
        "context_length": text.get("max_position_embeddings") or 0,
        "dtype": dtype or str(config.get("torch_dtype") or config.get("dtype") or ""),
        "size_bytes": sum(f.stat().st_size for f in directory.rglob("*") if f.is_file() and ".cache" not in f.parts),
        "chat_template": template,
        "license": _licence(directory),
        "tokenizer": "sentencepiece" if (directory / "tokenizer.model").is_file() else "bpe",
    }
