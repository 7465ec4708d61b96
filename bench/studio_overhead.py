"""What the studio path costs over running the core library directly.

    .venv/bin/python bench/studio_overhead.py [--model tiny|bundled] [--steps N] [--rounds R]

Starts a real studio (embedded Redis, uvicorn, one Celery worker) on
127.0.0.1, then alternates, R times, the same training run two ways:
  cli:    `python -m tuning train CONFIG.yaml` in a fresh process;
  studio: POST /api/v1/fine_tuning/jobs with a token, run on the worker,
          every event stored in the database and published to the channel
          layer; timed from the POST to the "succeeded" event.
Prints one JSON line per figure: the median wall-time ratio studio ÷ cli
(target ≤ 1.05), the median time from submit to the first loss event, and
each arm's rounds split into before the first step, the steps and after the
last step (the studio's also when its worker claimed the job), to show
where a difference comes from. ``--warmup`` studio jobs run first and are
reported apart: a studio worker is a long-lived process, so only the first
job it ever runs pays for importing torch and the training code.
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
# How often the studio arm asks for new events. Each poll is a request the web process serves on the same 2
# cores the worker trains on: at 20 a second the polls took about a quarter of a core from training (the web
# process's CPU time during a run), slowing the arm they time. A browser is pushed events over its WebSocket
# instead; twice a second costs a tenth of that and adds at most half a second to a run of about a minute.
POLL_S = 0.5


def model_dir(kind: str) -> Path:
    if kind == "tiny":
        from tests.tiny_model import tiny_model_dir

        return tiny_model_dir()
    from tuning.models import prepare_bundled_model

    return prepare_bundled_model(REPO / ".cache" / "bench" / "bundled")


def run_cli(model: Path, data: Path, out: Path, steps: int) -> tuple[float, dict]:
    """Wall seconds of `python -m tuning train`, and when (seconds from the start) its events came out."""
    config = {"base_model": str(model), "dataset_path": str(data), "output_dir": str(out), "max_steps": steps,
              "method": "lora", "method_params": LORA, **SETTINGS}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    marks = Marks()
    with subprocess.Popen([sys.executable, "-m", "tuning", "train", str(path)], cwd=REPO,
                          stdout=subprocess.PIPE, text=True) as process:
        for line in process.stdout:  # the StdoutSink's JSON lines, as they are printed
            marks.saw(json.loads(line)["kind"])
    if process.returncode != 0:
        raise SystemExit(f"python -m tuning train exited {process.returncode}")
    return marks.elapsed(), marks.phases()


class Marks:
    """When a run's first and last training step and its artifact were seen, to show where the time went."""

    def __init__(self):
        self.started, self.seen = time.monotonic(), {}

    def saw(self, kind: str) -> None:
        now = time.monotonic() - self.started
        self.seen.setdefault(f"first_{kind}", now)
        self.seen[f"last_{kind}"] = now

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def phases(self) -> dict:
        """Seconds before the first step (start-up: imports, model, data), of the steps, and after the last."""
        first, last, end = self.seen["first_metrics"], self.seen["last_metrics"], self.elapsed()
        return {"before_first_step_s": round(first, 2), "steps_s": round(last - first, 2),
                "after_last_step_s": round(end - last, 2)}


def run_studio(stack, token: str, model_id: int, dataset_id: int, steps: int) -> tuple[float, dict]:
    headers = {"Authorization": f"Bearer {token}"}
    api = stack.base_url + "/api/v1/fine_tuning/jobs"
    marks = Marks()
    response = requests.post(api, headers=headers, json={
        "model": model_id, "training_file": dataset_id, "method": {"type": "lora", "params": LORA},
        "hyperparameters": {**SETTINGS, "max_steps": steps}})
    response.raise_for_status()
    job_id, after = response.json()["id"], 0
    while True:
        page = requests.get(f"{api}/{job_id}/events", headers=headers, params={"after": after}).json()
        for event in page["data"]:
            marks.saw(event["kind"])
            if event["kind"] == "status" and event["data"]["status"] == "running":
                marks.saw("claimed")
            if event["kind"] == "status" and event["data"]["status"] in ("succeeded", "failed", "cancelled"):
                assert event["data"]["status"] == "succeeded", event
                return marks.elapsed(), {**marks.phases(), "claimed_s": round(marks.seen["first_claimed"], 2)}
        after = page["last_seq"]
        time.sleep(POLL_S)


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
    parser.add_argument("--warmup", type=int, default=1,
                        help="studio jobs run (and reported apart) before the rounds: a worker is a long-lived "
                             "process, and only its first job pays for importing torch and the training code")
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
        cold = [run_studio(stack, token, stack.tiny_model_id, dataset_id, args.steps) for _ in range(args.warmup)]
        cli_times, studio_times, cli_phases, studio_phases = [], [], [], []
        for round_ in range(args.rounds):
            wall, phases = run_cli(model, data, work / f"cli-{round_}", args.steps)
            cli_times.append(wall)
            cli_phases.append(phases)
            wall, phases = run_studio(stack, token, stack.tiny_model_id, dataset_id, args.steps)
            studio_times.append(wall)
            studio_phases.append(phases)
    finally:
        stop_all(stack.procs)
    common = {"model": args.model, "steps": args.steps, "rounds": args.rounds}
    print(json.dumps({"figure": "studio_over_cli_wall_time", "value": round(statistics.median(
        s / c for s, c in zip(studio_times, cli_times)), 3), "target": 1.05, "cli_s": cli_times,
        "studio_s": studio_times, **common}))
    print(json.dumps({"figure": "submit_to_first_loss_s", "value": statistics.median(
        p["before_first_step_s"] for p in studio_phases), **common}))
    if cold:
        print(json.dumps({"figure": "studio_first_jobs_s", "wall_s": [round(wall, 2) for wall, _ in cold],
                          "rounds": [phases for _, phases in cold], "model": args.model}))
    for arm, phases in (("cli", cli_phases), ("studio", studio_phases)):  # where each arm's time went, per round
        print(json.dumps({"figure": "phases_s", "arm": arm, "rounds": phases, "model": args.model}))


if __name__ == "__main__":
    main()
