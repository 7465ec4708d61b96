"""How long a quantize job will take, said on the form before it is queued.

Seconds per GB of source weights (fp32 safetensors), measured on the bundled
135M model (0.54 GB) by bench/quantize_export_time.py on a 2-core CPU shared
with other work (BENCHMARKS.md, 2026-12-07): a rough guide, linear in the
model's size, on the slow side for a CPU of its own, not a promise.
Imports nothing heavy: the web process calls it.
"""

from __future__ import annotations

GB = 1e9
# writing, per scheme group (GGUF quantizes with numpy; the others convert with torch)
WRITE_S_PER_GB = {"gguf": 46.0, "other": 30.0}
# the report: loading the source (and, for GGUF, reading the file back), then each part at its default size
# (3 prompts, 32 new tokens, 16 rows), for both models
LOAD_S_PER_GB = {"gguf": 58.0, "other": 20.0}
PART_S_PER_GB = {"agreement": 115.0, "answers": 860.0, "perplexity": 800.0, "speed": 700.0}


def estimate_seconds(*, weight_bytes: int, gguf: bool, parts: tuple[str, ...], max_new_tokens: int = 32,
                     eval_rows: int = 16) -> int:
    """Rough seconds for writing and the report's ``parts`` on a small CPU."""
    gb = weight_bytes / GB
    group = "gguf" if gguf else "other"
    scale = {"answers": max_new_tokens / 32, "speed": max_new_tokens / 32, "perplexity": eval_rows / 16}
    seconds = WRITE_S_PER_GB[group] * gb + (LOAD_S_PER_GB[group] * gb if parts else 0.0)
    seconds += sum(PART_S_PER_GB[part] * scale.get(part, 1.0) * gb for part in parts)
    return max(1, round(seconds))
