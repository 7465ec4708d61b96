"""The README model card written into every quantized or exported output."""

from __future__ import annotations

from pathlib import Path


def _mib(size) -> str:
    return "n/a" if size is None else f"{size / 2**20:.1f} MiB"


def _report_section(report: dict | None) -> str:
    if not report:
        return ""
    rows = [("Weights on disk", _mib(report["size_bytes_before"]), _mib(report["size_bytes_after"]))]
    if "perplexity_before" in report:
        rows.append((f"Perplexity ({report['eval_rows']} rows)", report["perplexity_before"],
                     report["perplexity_after"]))
    if "tokens_per_s_before" in report:
        rows.append(("Generation (tokens/s, this worker)", report["tokens_per_s_before"], report["tokens_per_s_after"]))
    table = "\n".join(f"| {name} | {before} | {after} |" for name, before, after in rows)
    agreement = ""
    if "agreement_top1" in report:
        agreement = (f"\nOn {report['agreement_tokens']} positions of the report's prompts, this model picks the "
                     f"source's next token {report['agreement_top1']:.1%} of the time (KL divergence "
                     f"{report['agreement_kl']:.4f} nats per token).\n")
    return f"""
## Before and after

Measured on {report.get("measured_by", "this folder reloaded the way the snippet above does")}.

| | source ({report.get('dtype_before', 'n/a')}) | this model |
|---|---|---|
{table}
{agreement}"""


def write_quantized_card(directory: Path, *, scheme, source: str, report: dict | None, name: str = "") -> Path:
    library = "gguf" if scheme.gguf_file else "transformers"
    text = f"""---
library_name: {library}
tags:
- tuning-studio
- {scheme.name}
---

# {scheme.label} of {name or Path(source).name}

{scheme.description}

- **Source:** {source}
- **Format:** {scheme.format}{f" (file `{scheme.gguf_file}`)" if scheme.gguf_file else ""}
- **Made with:** Tuning Studio

## How to load

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
model = {scheme.how_to_load}
```
{_report_section(report)}"""
    path = Path(directory) / "README.md"
    path.write_text(text)
    return path
