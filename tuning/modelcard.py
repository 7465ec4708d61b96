"""The README model card written next to every trained output."""

from __future__ import annotations

from pathlib import Path

from tuning.config import TrainConfig
from tuning.preference import PREFERENCE_LOSSES

AUTO_CLASS = {"classify": "AutoModelForSequenceClassification"}


def _load_snippet(produces: str, base: str, auto_class: str) -> str:
    if produces == "adapter":
        return f"""from transformers import {auto_class}
from peft import PeftModel

base = {auto_class}.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")"""
    return f"""from transformers import {auto_class}

model = {auto_class}.from_pretrained("path/to/this/folder")"""


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
    loss = f"{final_loss:.4f}" if final_loss is not None else "n/a"
    evaluated = "".join(f"\n- **{key.replace('_', ' ').capitalize()}:** {value}" for key, value in (evaluation or {}).items())
    kind = "adapter" if method.produces == "adapter" else "model"
    text = f"""---
base_model: {base}
library_name: {"peft" if kind == "adapter" else "transformers"}
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
{_load_snippet(kind, base, AUTO_CLASS.get(config.task, "AutoModelForCausalLM"))}
```
"""
    path = Path(directory) / "README.md"
    path.write_text(text)
    return path
