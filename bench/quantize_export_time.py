"""Wall time of quantizing or exporting the bundled SmolLM2-135M-Instruct with
each scheme, with the default report (sizes, the three default prompts answered
in one batch, next-token agreement; no perplexity, as the form's default picks
no dataset), split into writing and report, one line per scheme.

    .venv/bin/python bench/quantize_export_time.py [--only gguf_q8_0,gguf_q4_0] [--threads N]

Schemes that need a CUDA GPU are listed as skipped on a CPU. The load average
is printed with each line: on a shared machine the absolute seconds move with
it; ``cpu_s`` (the process's CPU seconds, all threads) much less, best read
with ``--threads 1``, where no thread spins waiting for another.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tuning.events import MemorySink  # noqa: E402
from tuning.models import prepare_bundled_model  # noqa: E402
from tuning.quantize import QUANT_SCHEMES  # noqa: E402
from tuning.quantize.config import QuantizeConfig  # noqa: E402
from tuning.quantize.run import run_quantize  # noqa: E402


class TimedSink(MemorySink):
    """Records when each progress phase first and last reported."""

    def __init__(self):
        super().__init__()
        self.started = time.monotonic()
        self.phases: dict[str, list[float]] = {}

    def emit(self, event):
        super().emit(event)
        if event.kind == "progress":
            now = time.monotonic() - self.started
            self.phases.setdefault(event.phase, [now - (event.elapsed_s or 0), now])[1] = now


def available_schemes(names: str):
    """(name, scheme) for each comma-separated name this machine can run; a line saying why for the others."""
    for name in names.split(","):
        scheme = QUANT_SCHEMES[name]
        if (reason := scheme.unavailable_reason()) is not None:
            print(json.dumps({"scheme": name, "skipped": reason}), flush=True)
            continue
        yield name, scheme


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(QUANT_SCHEMES), help="comma-separated scheme names")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    # Run the same script from a checkout of an older commit (copied there) to compare: it times that
    # commit's run_quantize with that commit's defaults; parts and agreement are then null.
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model_dir = prepare_bundled_model(REPO / ".cache" / "bench" / "smollm2-135m-instruct")
    with tempfile.TemporaryDirectory() as work:
        for name, _ in available_schemes(args.only):
            config = QuantizeConfig.from_dict({"scheme": name, "source_path": str(model_dir),
                                               "output_dir": str(Path(work) / name)})
            sink, cpu = TimedSink(), time.process_time()
            result = run_quantize(config, sink)
            total, cpu = time.monotonic() - sink.started, time.process_time() - cpu
            writing = [span for phase, span in sink.phases.items() if "riting" in phase]
            report_start = min((span[0] for phase, span in sink.phases.items() if "riting" not in phase),
                               default=total)
            print(json.dumps({
                "scheme": name, "seconds": round(total, 1), "cpu_s": round(cpu, 1),
                "writing_s": round(writing[0][1] - writing[0][0], 1) if writing else None,
                "report_s": round(total - report_start, 1), "parts": result.report.get("parts"),
                "agreement_top1": result.report.get("agreement_top1"),
                "agreement_kl": result.report.get("agreement_kl"),
                "size_ratio": result.report["size_ratio"], "load_average": round(os.getloadavg()[0], 1),
                "cpus": os.cpu_count()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
