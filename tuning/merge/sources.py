"""What a merge source is (a full model directory or an adapter directory on
its base) and the files every output carries besides its weights."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tuning.errors import ConfigError, ModelError
from tuning.merge.tensors import ADAPTER_CONFIG, WEIGHTS, WEIGHTS_INDEX
from tuning.unfoldable import unfoldable_refusal

# Copied from the base so an output loads with stock transformers and keeps the chat template.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json")
MODEL_FILES = ("config.json", "generation_config.json")
TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Source:
    path: Path
    weight: float
    kind: str  # "model" or "adapter"
    base: Path  # the adapter's base model (the run's base for full models)

    @property
    def label(self) -> str:
        return str(self.path)


def is_adapter(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).exists()


def resolve_sources(config) -> list[Source]:
    """The config's sources with their kind and base; a missing directory is a
    ConfigError naming the source."""
    base = Path(config.base_model)
    if not (base / "config.json").exists():
        raise ConfigError({"base_model": f"{base} is not a model directory (no config.json); give the local "
                                         f"directory of the base model the sources were fine-tuned from"})
    sources, errors = [], {}
    for index, raw in enumerate(config.sources):
        path = Path(raw["path"])
        if refusal := unfoldable_refusal(path, "merged"):
            errors[f"sources.{index}.path"] = refusal
            continue
        if is_adapter(path):
            kind = "adapter"
        elif (path / WEIGHTS).exists() or (path / WEIGHTS_INDEX).exists():
            kind = "model"
        else:
            errors[f"sources.{index}.path"] = (f"{path} is neither a model directory (model.safetensors) nor an "
                                               f"adapter directory (adapter_config.json)")
            continue
        source_base = Path(raw.get("base") or config.base_model)
        if kind == "adapter" and not (source_base / "config.json").exists():
            errors[f"sources.{index}.base"] = f"{source_base} is not a model directory; give the adapter's base model"
            continue
        sources.append(Source(path=path, weight=raw.get("weight", 1.0), kind=kind, base=source_base))
    if errors:
        raise ConfigError(errors)
    return sources


def copy_base_files(base: Path, out: Path, *, model: bool, dtype: str = "auto") -> None:
    """Tokenizer files (with the chat template) and, for a full model, its
    config with the output dtype recorded."""
    for name in TOKENIZER_FILES + (MODEL_FILES if model else ()):
        if (base / name).exists():
            shutil.copy2(base / name, out / name)
    if model and dtype != "auto":
        config = json.loads((out / "config.json").read_text())
        for key in ("torch_dtype", "dtype"):
            if key in config or key == "dtype":
                config[key] = TORCH_DTYPES[dtype]
        (out / "config.json").write_text(json.dumps(config, indent=2))


def torch_dtype(name: str, base: Path):
    """The torch dtype to save in; "auto" is the base model's declared dtype (fp32 if none)."""
    import torch

    if name == "auto":
        config = json.loads((base / "config.json").read_text())
        name = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
            config.get("dtype") or config.get("torch_dtype") or "float32", "fp32")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def fold_with_peft(adapter: Path, base: Path, out: Path, *, dtype, trust_remote_code: bool) -> None:
    """Fold any peft adapter into its base with peft's own ``merge_and_unload``
    (which knows every adapter type) and save a safetensors model. Holds the
    whole model in memory once."""
    from peft import PeftModel

    from tuning.models import load_causal_lm

    model = load_causal_lm(str(base), trust_remote_code=trust_remote_code)
    try:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload(progressbar=False)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot fold the adapter {adapter} into {base}: {exc}. Check that the adapter was trained "
                         f"on this base model") from None
    model.to(dtype).save_pretrained(str(out), safe_serialization=True)
