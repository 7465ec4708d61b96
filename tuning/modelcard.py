"""The README model card written next to every adapter."""

from __future__ import annotations

from pathlib import Path

from tuning.config import TrainConfig


def write_model_card(directory: str | Path, *, config: TrainConfig, method_label: str, final_loss: float | None,
                     steps: int, trainable_parameters: int) -> Path:
    base = config.base_model_name or config.base_model
    hyper = {
        "learning_rate": config.learning_rate, "epochs": config.epochs, "max_steps": config.max_steps,
        "batch_size": config.batch_size, "gradient_accumulation": config.gradient_accumulation,
        "max_length": config.max_length, "scheduler": config.scheduler, "warmup_ratio": config.warmup_ratio,
        "weight_decay": config.weight_decay, "seed": config.seed, "loss_on_prompt": config.loss_on_prompt,
        **config.method_params,
    }
    rows = "\n".join(f"| {key} | {value} |" for key, value in hyper.items())
    loss = f"{final_loss:.4f}" if final_loss is not None else "n/a"
    text = f"""---
base_model: {base}
library_name: peft
tags:
- tuning-studio
- {config.method}
---

# {method_label} adapter for {base}

Fine-tuned with Tuning Studio.

- **Base model:** {base}
- **Dataset:** {config.dataset_name or Path(config.dataset_path).name} (sha256 `{config.dataset_sha256 or 'n/a'}`)
- **Method:** {method_label}
- **Steps:** {steps}
- **Trainable parameters:** {trainable_parameters:,}
- **Final training loss:** {loss}

## Hyperparameters

| setting | value |
|---|---|
{rows}

## Load it

```python
from transformers import AutoModelForCausalLM
from peft import PeftModel

base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
```
"""
    path = Path(directory) / "README.md"
    path.write_text(text)
    return path
