"""How long a quantize job will take, said on the form before it is queued.

Seconds per GB of source weights (fp32 safetensors), measured on the bundled
135M model by bench/quantize_export_time.py on a 2-core CPU shared with other
work (BENCHMARKS.md): a rough guide, linear in the model's size, not a promise.
Imports nothing heavy: the web process calls it.
"""

from __future__ import annotations

GB = 1e9
# writing, per scheme group (GGUF quantizes with numpy; the others convert with torch)
WRITE_S_PER_GB = {"gguf": 45.0, "other": 25.0}
# each report part at its default size (3 prompts, 32 new tokens; 16 rows of perplexity)
PART_S_PER_GB = {"load": 25.0, "answers": 110.0, "agreement": 25.0, "perplexity": 120.0, "speed": 90.0}


def estimate_seconds(*, weight_bytes: int, gguf: bool, parts: tuple[str, ...], max_new_tokens: int = 32,
                     eval_rows: int = 16) -> int:
    """Rough seconds for writing and the report's ``parts`` on a small CPU."""
    gb = weight_bytes / GB
    scale = {"answers": max_new_tokens / 32, "speed": max_new_tokens / 32, "perplexity": eval_rows / 16}
    seconds = WRITE_S_PER_GB["gguf" if gguf else "other"] * gb
    if parts:
        seconds += PART_S_PER_GB["load"] * gb
    seconds += sum(PART_S_PER_GB[part] * scale.get(part, 1.0) * gb for part in parts)
    return max(1, round(seconds))
