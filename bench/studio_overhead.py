"""What the studio path costs over running the core library directly.

    .venv/bin/python bench/studio_overhead.py [--model tiny|bundled] [--steps N] [--rounds R]

Starts a real studio (embedded Redis, uvicorn, one Celery worker) on
127.0.0.1, then alternates, R times, the same training run two ways:
  cli:    `python -m tuning train CONFIG.yaml` in a fresh process;
  studio: POST /api/v1/fine_tuning/jobs with a token, run on the worker,
          every event stored in the database and published to the channel
          layer; timed from the POST to the "succeeded" event.
Prints one JSON line per figure: the median wall-time ratio studio ÷ cli
(target ≤ 1.05) and the median time from submit to the first loss event.
The studio's worker has torch imported already while the CLI pays for its
imports: that is part of what a user of each path waits for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETTINGS = {"batch_size": 4, "learning_rate": 0.001, "warmup_ratio": 0.0, "seed": 7, "save_every": 100000,
            "max_length": 256}
LORA = {"rank": 8, "alpha": 16}


def model_dir(kind: str) -> Path:
    if kind == "tiny":
        from tests.tiny_model import tiny_model_dir

        return tiny_model_dir()
    from tuning.models import prepare_bundled_model

    return prepare_bundled_model(REPO / ".cache" / "bench" / "bundled")


def run_cli(model: Path, data: Path, out: Path, steps: int) -> float:
    config = {"base_model": str(model), "dataset_path": str(data), "output_dir": str(out), "max_steps": steps,
              "method": "lora", "method_params": LORA, **SETTINGS}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "tuning", "train", str(path)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def run_studio(stack, token: str, model_id: int, dataset_id: int, steps: int) -> tuple[float, float]:
    headers = {"Authorization": f"Bearer {token}"}
    api = stack.base_url + "/api/v1/fine_tuning/jobs"
    started = time.monotonic()
    response = requests.post(api, headers=headers, json={
        "model": model_id, "training_file": dataset_id, "method": {"type": "lora", "params": LORA},
        "hyperparameters": {**SETTINGS, "max_steps": steps}})
    response.raise_for_status()
    job_id, after, first_loss = response.json()["id"], 0, None
    while True:
        page = requests.get(f"{api}/{job_id}/events", headers=headers, params={"after": after}).json()
        for event in page["data"]:
            if event["kind"] == "metrics" and first_loss is None:
                first_loss = time.monotonic() - started
            if event["kind"] == "status" and event["data"]["status"] in ("succeeded", "failed", "cancelled"):
                assert event["data"]["status"] == "succeeded", event
                return time.monotonic() - started, first_loss
        after = page["last_seq"]
        time.sleep(0.05)


TOKEN = """
from django.contrib.auth import get_user_model
from studio.accounts.services import api_token_create
print(api_token_create(user=get_user_model().objects.get(username="admin"), name="bench")[1])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "bundled"), default="bundled")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from studio.launcher import stop_all
    from tests.stack import start_stack

    model = model_dir(args.model)
    work = Path(tempfile.mkdtemp(prefix="studio-overhead-"))
    data = REPO / "samples" / "instructions-sample.jsonl"
    stack = start_stack(work / "stack", model)
    try:
        session = stack.login()
        dataset_id = stack.upload(session, data.name, data.read_text())
        token = stack.manage("shell", "-c", TOKEN).strip().splitlines()[-1]
        cli_times, studio_times, first_losses = [], [], []
        for round_ in range(args.rounds):
            cli_times.append(run_cli(model, data, work / f"cli-{round_}", args.steps))
            wall, first = run_studio(stack, token, stack.tiny_model_id, dataset_id, args.steps)
            studio_times.append(wall)
            first_losses.append(first)
    finally:
        stop_all(stack.procs)
    common = {"model": args.model, "steps": args.steps, "rounds": args.rounds}
    print(json.dumps({"figure": "studio_over_cli_wall_time", "value": round(statistics.median(
        s / c for s, c in zip(studio_times, cli_times)), 3), "target": 1.05, "cli_s": cli_times,
        "studio_s": studio_times, **common}))
    print(json.dumps({"figure": "submit_to_first_loss_s", "value": round(statistics.median(first_losses), 2),
                      **common}))


if __name__ == "__main__":
    main()
