"""The README model card written next to every trained output."""

from __future__ import annotations

import re
from pathlib import Path

from tuning.config import TrainConfig
from tuning.methods import STUDIO_LOADED_FILES
from tuning.preference import PREFERENCE_LOSSES

AUTO_CLASS = {"classify": "AutoModelForSequenceClassification", "reward": "AutoModelForSequenceClassification"}


def _is_local(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or Path(ref).expanduser().exists()


def _looks_like_hub_id(ref: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", ref)) and not _is_local(ref)


def base_model_refs(config: TrainConfig) -> tuple[str, str]:
    """(local path, hub id) of the base model, either "" when unknown: a
    folder model has no hub id, a hub model loaded from the hub no local copy."""
    local = config.base_model if _is_local(config.base_model) else ""
    hub = next((ref for ref in (config.base_model_name, config.base_model) if _looks_like_hub_id(ref)), "")
    if not local and not hub:  # neither recognisable: the reference as given
        hub = config.base_model
    return local, hub


def _load_snippet(produces: str, local: str, hub: str, auto_class: str) -> str:
    if produces == "adapter":
        if local and hub:  # offline the hub id fails; elsewhere the local path may not exist
            base = (f"# the base model: its copy where this was trained, or {hub} from the hub\n"
                    f'base = {auto_class}.from_pretrained("{local}")\n'
                    f'# base = {auto_class}.from_pretrained("{hub}")')
        else:
            base = f'base = {auto_class}.from_pretrained("{local or hub}")'
        return f"""from transformers import {auto_class}
from peft import PeftModel

{base}
model = PeftModel.from_pretrained(base, "path/to/this/folder")"""
    return f"""from transformers import {auto_class}

model = {auto_class}.from_pretrained("path/to/this/folder")"""


def loss_text(loss: float | None) -> str:
    """A run's final loss as its card and log show it; none where a run resumed from its final checkpoint
    written before the checkpoints kept the last loss."""
    return "n/a" if loss is None else f"{loss:.4f}"


def write_model_card(directory: str | Path, *, config: TrainConfig, method, final_loss: float | None, steps: int,
                     trainable_parameters: int, evaluation: dict | None = None) -> Path:
    base = config.base_model_name or config.base_model
    hyper = {
        "task": config.task, "learning_rate": config.learning_rate, "epochs": config.epochs,
        "max_steps": config.max_steps, "batch_size": config.batch_size,
        "gradient_accumulation": config.gradient_accumulation, "max_length": config.max_length,
        "scheduler": config.scheduler, "warmup_ratio": config.warmup_ratio, "weight_decay": config.weight_decay,
        "seed": config.seed, "loss_on_prompt": config.loss_on_prompt, **config.method_params,
    }
    if config.task == "preference":
        hyper.pop("loss_on_prompt")
        hyper |= {"preference_loss": config.preference_loss, "beta": config.beta}
        hyper |= {key: getattr(config, key) for key, used in (
            ("label_smoothing", config.label_smoothing > 0), ("simpo_gamma", config.preference_loss == "simpo"),
            ("cpo_alpha", config.preference_loss == "cpo"),
            ("reference", PREFERENCE_LOSSES[config.preference_loss].needs_reference)) if used}
    rows = "\n".join(f"| {key} | {value} |" for key, value in hyper.items())
    loss = loss_text(final_loss)
    evaluated = "".join(f"\n- **{key.replace('_', ' ').capitalize()}:** {value}"
                        for key, value in (evaluation or {}).items())
    kind = "adapter" if method.produces == "adapter" else "model"
    snippet = _load_snippet(kind, *base_model_refs(config), AUTO_CLASS.get(config.task, "AutoModelForCausalLM"))
    library = "peft" if kind == "adapter" else "transformers"
    if any((Path(directory) / name).exists() for name in STUDIO_LOADED_FILES):  # no stock library loads it: ours does
        library = "tuning-studio"
        snippet = (f"from tuning.loading import load_artifact  # Tuning Studio's loader ({method.label})\n\n"
                   f'model, tokenizer = load_artifact("path/to/this/folder", base_model="{base}", '
                   f'task="{config.task}")')
    text = f"""---
base_model: {base}
library_name: {library}
tags:
- tuning-studio
- {config.method}{f"{chr(10)}- {config.preference_loss}" if config.task == "preference" else ""}
---

# {method.label} {kind} for {base}

Fine-tuned with Tuning Studio.

- **Base model:** {base}
- **Dataset:** {config.dataset_name or Path(config.dataset_path).name} (sha256 `{config.dataset_sha256 or 'n/a'}`)
- **Method:** {method.label} ({method.paper})
- **Steps:** {steps}
- **Trainable parameters:** {trainable_parameters:,}
- **Final training loss:** {loss}{evaluated}

## Hyperparameters

| setting | value |
|---|---|
{rows}

## Load it

```python
{snippet}
```
"""
    path = Path(directory) / "README.md"
    path.write_text(text)
    return path
