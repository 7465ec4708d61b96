"""Where one training step of the studio's loop spends its time (torch.profiler).

    .venv/bin/python bench/train_profile.py [--method lora|full] [--model bundled|tiny|PATH]
                                            [--precision auto|bf16|fp32] [--packing on|off]
                                            [--batch-size 4] [--warmup 2] [--steps 2] [--rows 15]
                                            [--compare-dropout 6]

Builds the run exactly as ``python -m tuning train`` does (the sample data,
bench/train_speed.py's settings), takes ``--warmup`` steps, then profiles
``--steps`` steps of ``tuning.train.optimizer_step`` and prints the ops
that took the most CPU time (self time, summed over the profiled steps),
each as a share of the profiled wall time, as JSON lines then a table.

``--compare-dropout N`` instead takes N steps alternating peft's dense
``nn.Dropout`` and the studio's ``SparseDropout`` on the same model (swapped
in place between steps) and reports the median CPU seconds per 1,000 real tokens of each
kind of step: the process's own CPU time, which a busy machine's other processes
do not inflate the way they inflate wall time (run it with
OMP_NUM_THREADS=1, so that no thread waits on another).
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

from bench.train_speed import LORA, SAMPLE, TARGETS, model_dir_for  # noqa: E402  (after the path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--packing", choices=["on", "off"], default="on")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rows", type=int, default=15, help="how many ops to print")
    parser.add_argument("--compare-dropout", type=int, default=0, metavar="N",
                        help="N steps alternating dense and sparse LoRA dropout: median CPU s per 1k tokens of each")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    from torch.profiler import ProfilerActivity, profile

    from tuning.config import TrainConfig
    from tuning.data.tasks import batches
    from tuning.events import MemorySink
    from tuning.methods import METHODS
    from tuning.train import load_data, optimizer_step
    from tuning.train_model import device_and_autocast, prepare_model
    from tuning.train_run import start_run

    workdir = Path(tempfile.mkdtemp(prefix="train-profile-"))
    steps = args.warmup + args.steps
    config = TrainConfig.from_dict({
        "base_model": str(model_dir_for(args.model)), "dataset_path": str(SAMPLE), "output_dir": str(workdir),
        "method": args.method, "max_steps": steps, "batch_size": args.batch_size, "max_length": args.max_length,
        "method_params": {**LORA, "target_modules": ",".join(TARGETS)} if args.method == "lora" else {},
        "learning_rate": 2e-4, "warmup_ratio": 0.0, "seed": 0, "precision": args.precision,
        "save_every": 10**6, "packing": args.packing == "on"})
    sink = MemorySink()
    method = METHODS[config.method]
    params = method.params(**config.method_params)
    device = device_and_autocast(config.precision)
    torch.manual_seed(config.seed)
    data = load_data(config, sink, workdir)
    prepared = prepare_model(config, sink, method=method, params=params, device=device, tokenizer=data.tokenizer,
                             data=data.data, train_items=data.train_items, collate=data.collate,
                             total_steps=data.total_steps)
    run = start_run(config, sink, method=method, params=params, device=device, output_dir=workdir, data=data,
                    prepared=prepared)
    run.model.train()
    step_batches = [[b] for b in batches(data.train_items, batch_size=config.batch_size, seed=config.seed, epoch=0)]
    if args.compare_dropout:
        compare_dropout(run, step_batches, args.warmup, args.compare_dropout)
        return
    for batch in step_batches[:args.warmup]:
        optimizer_step(run, batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        tokens = sum(optimizer_step(run, batch)[1] for batch in step_batches[args.warmup:steps])
        wall = time.perf_counter() - started
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    print(json.dumps({"figure": "profiled_steps", "steps": args.steps, "tokens": tokens, "wall_s": round(wall, 3),
                      "precision": device.precision, "method": args.method, "packing": args.packing,
                      "logs": [e.message for e in sink.of_kind("log")]}))
    # Self CPU time sums over threads' ops; as a share of wall time it is comparable between ops.
    for e in events[:args.rows]:
        print(json.dumps({"figure": "op", "name": e.key, "calls": e.count,
                          "self_s": round(e.self_cpu_time_total / 1e6, 3),
                          "share_of_wall": round(e.self_cpu_time_total / 1e6 / wall, 3)}))
    print(f"\n{args.steps} steps, {tokens} real tokens, {wall:.2f} s, precision {device.precision}\n")
    print(f"{'op':<48} {'calls':>7} {'self s':>8} {'of wall':>8}")
    for e in events[:args.rows]:
        print(f"{e.key[:48]:<48} {e.count:>7} {e.self_cpu_time_total / 1e6:>8.3f} "
              f"{e.self_cpu_time_total / 1e6 / wall:>8.1%}")


def compare_dropout(run, step_batches: list, warmup: int, steps: int) -> None:
    """Steps alternating peft's nn.Dropout and SparseDropout on one model: each kind's median CPU seconds."""
    import statistics

    import torch

    from tuning.sparse_dropout import sparse_dropout_class
    from tuning.train import optimizer_step

    sparse = sparse_dropout_class()
    dicts = [m.lora_dropout for m in run.model.modules() if isinstance(getattr(m, "lora_dropout", None),
                                                                       torch.nn.ModuleDict)]

    def use(kind: str) -> None:
        for dropouts in dicts:
            for name, module in dropouts.items():
                dropouts[name] = (torch.nn.Dropout(module.p) if kind == "dense" else sparse(module.p)).train()

    cpu = {"dense": [], "sparse": []}
    for index, batch in enumerate(step_batches[:warmup + steps]):
        kind = ("dense", "sparse")[index % 2]
        use(kind)
        started = time.process_time()
        tokens = optimizer_step(run, batch)[1]
        if index >= warmup:  # per 1,000 real tokens: the two kinds of step see different batches
            cpu[kind].append((time.process_time() - started) * 1000 / tokens)
    medians = {kind: statistics.median(times) for kind, times in cpu.items()}
    print(json.dumps({"figure": "dropout_step_cpu_s", "modules": sum(len(d) for d in dicts),
                      "dense_s_per_1k_tokens": round(medians["dense"], 3),
                      "sparse_s_per_1k_tokens": round(medians["sparse"], 3),
                      "ratio": round(medians["dense"] / medians["sparse"], 3),
                      "dense_steps": [round(x, 3) for x in cpu["dense"]],
                      "sparse_steps": [round(x, 3) for x in cpu["sparse"]]}))


if __name__ == "__main__":
    main()
