"""Download throughput of the studio's model_add download path vs `hf download`,
side by side, from one hub on 127.0.0.1 (tests/hub_server.py).

    .venv/bin/python bench/hub_download.py [--megabytes 512] [--rounds 3]

The repo holds a small Llama config, a tokenizer file and one safetensors file
of ``--megabytes`` of random bytes. Each round runs, in a fresh process and a
fresh directory, first the studio's path (tuning.hub.hub_plan + hub_download:
what worker/model_runs.py does, with its per-chunk progress and cancel checks)
and then what `hf download REPO --local-dir DIR` runs (huggingface_hub's
snapshot_download, 8 threads), alternating which goes first. Each process
times its download alone (a worker has its libraries loaded before a job
starts). The figure is the ratio of their throughputs (studio ÷ hf; goal
≥ 0.9), the median over rounds. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.hub_server import HubServer, Repo  # noqa: E402

REPO_ID = "bench/random-llama"
CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 1000, "max_position_embeddings": 512}
# Each arm runs in its own process and times its download only: a worker has
# its libraries loaded before a job starts (the studio's architecture check
# uses transformers' tables), and `hf download` is snapshot_download.
STUDIO = """
import sys, time
from pathlib import Path
from tuning.hub import hub_download, hub_plan
from tuning.model_info import _causal_lm_types
_causal_lm_types()
target, started, done = Path(sys.argv[1]), time.perf_counter(), [0]
plan = hub_plan(sys.argv[2], endpoint=sys.argv[3], target_dir=target)
hub_download(plan, target_dir=target, endpoint=sys.argv[3], on_bytes=lambda n: done.__setitem__(0, done[0] + n),
             cancelled=lambda: False)
print(time.perf_counter() - started)
"""
HF = """
import sys, time
from huggingface_hub import snapshot_download
started = time.perf_counter()
snapshot_download(sys.argv[2], local_dir=sys.argv[1], endpoint=sys.argv[3])
print(time.perf_counter() - started)
"""


def safetensors_bytes(megabytes: int) -> bytes:
    count = megabytes * 2**20 // 4
    header = json.dumps({"weight": {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + os.urandom(count * 4)


def timed(command: list[str], env: dict) -> float:
    """The seconds the arm's download took, as it printed them."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{command[0]} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    files = {"config.json": json.dumps(CONFIG).encode(), "tokenizer.json": b"{}" * 1000,
             "model.safetensors": safetensors_bytes(args.megabytes)}
    total = sum(map(len, files.values()))
    hub = HubServer(repos={REPO_ID: Repo(files=files)})
    endpoint = hub.start()
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO)}
    ratios, studio_mb_s, hf_mb_s = [], [], []
    try:
        for round_ in range(args.rounds):
            with tempfile.TemporaryDirectory() as scratch:
                arms = {"studio": [sys.executable, "-c", STUDIO, f"{scratch}/studio", REPO_ID, endpoint],
                        "hf": [sys.executable, "-c", HF, f"{scratch}/hf", REPO_ID, endpoint]}
                order = ["studio", "hf"] if round_ % 2 == 0 else ["hf", "studio"]
                seconds = {arm: timed(arms[arm], env) for arm in order}
                assert (Path(scratch) / "studio" / "model.safetensors").stat().st_size == len(
                    files["model.safetensors"])
                shutil.rmtree(scratch, ignore_errors=True)
            studio_mb_s.append(total / 2**20 / seconds["studio"])
            hf_mb_s.append(total / 2**20 / seconds["hf"])
            ratios.append(seconds["hf"] / seconds["studio"])
    finally:
        hub.stop()
    print(json.dumps({"figure": "hub_download_throughput_ratio", "studio_over_hf": round(statistics.median(ratios), 3),
                      "rounds": [round(r, 3) for r in ratios], "megabytes": round(total / 2**20),
                      "studio_mb_s": round(statistics.median(studio_mb_s), 1),
                      "hf_mb_s": round(statistics.median(hf_mb_s), 1), "goal": 0.9}))


if __name__ == "__main__":
    main()
