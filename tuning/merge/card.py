"""The README model card written next to every merge output: what was merged,
how, and how to load it."""

from __future__ import annotations

from pathlib import Path


def _load_snippet(produces: str, base: str) -> str:
    if produces == "adapter":
        return f"""from transformers import AutoModelForCausalLM
from peft import PeftModel

base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")"""
    return """from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")"""


def write_merge_card(directory: Path, *, config, method, sources) -> Path:
    rows = "\n".join(f"| {s.path} | {s.kind} | {s.weight:g} |" for s in sources)
    params = "\n".join(f"| {key} | {value} |" for key, value in config.method_params.items()) or "| (none) | |"
    library = "peft" if method.produces == "adapter" else "transformers"
    text = f"""---
base_model: {config.base_model}
library_name: {library}
tags:
- tuning-studio
- merge
- {method.name}
---

# {method.label} merge of {len(sources)} source(s)

Made with Tuning Studio by **{method.label}** ({method.paper}): {method.description}

- **Base model:** {config.base_model}
- **Saved dtype:** {config.dtype}

## Sources

| source | kind | weight |
|---|---|---|
{rows}

## Method settings

| setting | value |
|---|---|
{params}

## Load it

```python
{_load_snippet(method.produces, config.base_model)}
```
"""
    path = directory / "README.md"
    path.write_text(text)
    return path
