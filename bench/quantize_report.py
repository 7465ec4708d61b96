"""Quantize the bundled SmolLM2-135M-Instruct with each CPU scheme and
print one JSON line per scheme: weights on disk before/after (bytes),
greedy generation tokens/s before/after, perplexity before/after on the
sample data, and the seconds the job took.

    .venv/bin/python bench/quantize_report.py [--only torchao_int8,gguf_q8_0] [--rows 16] [--tokens 32]

"Before" is the bundled model as converted (fp32 safetensors); "after" is
the output reloaded from disk the way its README says (GGUF through
transformers, which dequantizes it: GGUF speed here is not llama.cpp's).
The comparable figures are the ratios within one line (same machine, same
moment); absolute tokens/s depend on what else the CPU is doing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tuning.events import MemorySink  # noqa: E402
from tuning.models import prepare_bundled_model  # noqa: E402
from bench.quantize_export_time import available_schemes  # noqa: E402
from tuning.quantize.config import QuantizeConfig  # noqa: E402
from tuning.quantize.run import run_quantize  # noqa: E402

SAMPLE = REPO / "samples" / "instructions-sample.jsonl"
DEFAULT = ("torchao_int8", "torchao_int4", "gguf_q8_0", "gguf_q4_0", "safetensors_bf16", "safetensors_fp16")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(DEFAULT), help="comma-separated scheme names")
    parser.add_argument("--rows", type=int, default=16, help="evaluation rows for perplexity")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per prompt")
    args = parser.parse_args()
    model_dir = prepare_bundled_model(REPO / ".cache" / "bench" / "smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as work:
        for name, _ in available_schemes(args.only):
            config = QuantizeConfig.from_dict({
                "scheme": name, "source_path": str(model_dir), "output_dir": str(Path(work) / name),
                "eval_dataset_path": str(SAMPLE), "eval_rows": args.rows, "max_new_tokens": args.tokens,
                "report_speed": True,
                "prompts": ["Explain in two sentences what a neural network is."]})
            started = time.monotonic()
            result = run_quantize(config, MemorySink())
            report = result.report
            print(json.dumps({
                "scheme": name, "bytes_before": report["size_bytes_before"], "bytes_after": report["size_bytes_after"],
                "size_ratio": report["size_ratio"],
                "tokens_per_s_before": report["tokens_per_s_before"],
                "tokens_per_s_after": report["tokens_per_s_after"],
                "perplexity_before": report["perplexity_before"], "perplexity_after": report["perplexity_after"],
                "answer_after": report["answers"][0]["after"][:80], "seconds": round(time.monotonic() - started, 1),
                "machine": platform.machine()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
