"""Tokens per second of one LoRA (or full) run on 1 device and on N, the
way a job on N devices runs: torchrun launching ``tuning.distributed`` (the
worker's own command, ``tuning.distributed.launch_command``), DDP for
adapters, FSDP2 for full fine-tuning (``--method full``).

    .venv/bin/python bench/distributed_scaling.py [--devices N] [--model bundled|tiny|PATH] [--method lora]
                                                  [--steps 12] [--per-device-batch 8] [--max-length 512]
                                                  [--device cpu|cuda] [--rounds 1]

Weak scaling, as the issue's goal reads it: each device gets the same
micro-batch, so N devices train a global batch N times as large. Real
tokens per second between the end of step 2 and the last step (start-up,
loading and the first steps' kernel warm-up left out), from the events rank
0 writes (``tokens_seen``, ``elapsed_s``: tokens summed over the ranks).
Prints one JSON line per run and the scaling efficiency tps(N) / (N ×
tps(1)) (goal on GPUs: ≥ 0.85 for LoRA on a 1B model). On a CPU the ranks
share the same cores (gloo), so the figure there only proves the path runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.train_speed import emit, machine, model_dir_for  # noqa: E402

SAMPLE = REPO / "samples" / "instructions-sample.jsonl"


def run(devices: int, args, base: Path, workdir: Path) -> dict:
    from tuning.distributed import launch_command

    run_dir = workdir / f"devices-{devices}"
    run_dir.mkdir(parents=True)
    config = {"base_model": str(base), "dataset_path": str(SAMPLE), "task": "sft", "method": args.method,
              "output_dir": str(run_dir / "out"), "max_steps": args.steps, "devices": devices,
              "batch_size": args.per_device_batch * devices, "max_length": args.max_length,
              "learning_rate": 1e-4, "warmup_ratio": 0.0, "seed": 0}
    (run_dir / "config.json").write_text(json.dumps(config))
    events, stop = run_dir / "events.jsonl", run_dir / "stop"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // devices))
    command = launch_command(devices=devices, config_file=run_dir / "config.json", events=events, stop_file=stop,
                             max_restarts=0)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()] if events.exists() else []
    failed = next((line["failed"] for line in lines if "failed" in line), None)
    if done.returncode != 0 or failed:
        raise SystemExit(f"{devices} device(s) failed: {failed or done.stderr[-3000:]}")
    metrics = [line["data"] for line in lines if line.get("kind") == "metrics"]
    first, last = metrics[1], metrics[-1]  # from the end of step 2
    tokens_per_s = (last["tokens_seen"] - first["tokens_seen"]) / (last["elapsed_s"] - first["elapsed_s"])
    return {"devices": devices, "tokens_per_s": round(tokens_per_s, 1), "steps": len(metrics),
            "loss": last["loss"], "memory_mib": last.get("memory_mib")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=0, help="N (default: every GPU, else 2 CPU processes)")
    parser.add_argument("--model", default="bundled", help="bundled, tiny, or a model directory")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--per-device-batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if present")
    args = parser.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    args.devices = args.devices or (gpus if gpus > 1 else 2)
    lines: list[dict] = []
    if args.device == "cuda" and (gpus < 2 or args.devices > gpus):
        emit({"figure": "distributed_scaling", "skipped": f"{args.devices} devices asked for, {gpus} GPU(s) here"},
             lines)
        return
    emit({"figure": "machine", **machine(), "device": args.device, "gpus": gpus}, lines)
    base = model_dir_for(args.model)
    efficiencies = []
    with tempfile.TemporaryDirectory(prefix="distributed-scaling-") as tmp:
        for round_ in range(args.rounds):
            one = run(1, args, base, Path(tmp) / f"round-{round_}")
            many = run(args.devices, args, base, Path(tmp) / f"round-{round_}")
            efficiency = many["tokens_per_s"] / (args.devices * one["tokens_per_s"])
            efficiencies.append(efficiency)
            for result in (one, many):
                emit({"figure": "run", "round": round_, **result}, lines)
    emit({"figure": "distributed_scaling", "model": args.model, "method": args.method, "device": args.device,
          "devices": args.devices, "efficiency_median": round(statistics.median(efficiencies), 3),
          "efficiencies": [round(e, 3) for e in efficiencies]}, lines)


if __name__ == "__main__":
    main()
