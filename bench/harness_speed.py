"""Harness wall time through the studio vs lm-evaluation-harness's own command line.

One multiple-choice task of ``--rows`` rows (4 choices each) generated from a
dataset file by the studio (tuning.harness_tasks), scored on the bundled
SmolLM2-135M-Instruct (or ``--model DIR``):

- studio: `python -m tuning evaluate CONFIG.yaml` with ``harness: multiple_choice``
  (what an evaluate job runs on a worker: loading, the generated task, HFLM
  around the loaded model, progress events), the base side skipped;
- lm_eval: `lm_eval run --model hf --model_args pretrained=DIR --tasks TASK
  --include_path DIR` on the same generated task definition.

Each arm is a fresh process (imports and loading count for both), run in
alternating rounds; the ratio is the median of per-round ratios (studio ÷
lm_eval; goal ≤ 1.1). Both arms' accuracy is printed: they must agree.
Beside wall time, each arm's CPU seconds (user + system of the process and
its children) and the load average when it ended: on a machine shared with
other work, wall time mostly measures the others, CPU time far less so.

    .venv/bin/python bench/harness_speed.py [--rows 500] [--rounds 2] [--batch-size 8] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tuning.harness_tasks import write_task  # noqa: E402
from tuning.models import prepare_bundled_model  # noqa: E402
from tuning.scoring import EvaluateConfig  # noqa: E402

WORDS = ("apple river stone cloud music paper orange garden window silver candle forest tiger bread ocean pencil "
         "mirror rocket castle violin").split()


def write_dataset(path: Path, rows: int) -> None:
    with open(path, "w") as handle:
        for i in range(rows):
            options = [WORDS[(i * 3 + c * 7) % len(WORDS)] for c in range(4)]
            handle.write(json.dumps({"question": f"Which of these words is number {i} in the list?",
                                     "choices": options, "answer": "ABCD"[i % 4]}) + "\n")


def timed(command: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(command[:4])} … failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, done.stdout


def studio_acc(stdout: str) -> float:
    for line in stdout.splitlines():
        event = json.loads(line) if line.startswith("{") else {}
        if event.get("kind") == "harness":
            return next(r["metrics"]["acc"] for r in event["data"]["results"] if r["side"] == "artifact")
    raise SystemExit("the studio run reported no harness scores")


def cli_acc(stdout: str) -> float:
    match = re.search(r"\|\s*acc\s*\|[^|]*\|\s*([0-9.]+)", stdout)  # the results table: |acc |↑ |0.2500|
    if not match:
        raise SystemExit(f"no acc in lm_eval's output:\n{stdout[-2000:]}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="")
    args = parser.parse_args()
    model = args.model or str(prepare_bundled_model(REPO / ".cache" / "bench" / "smollm2-135m-instruct"))
    work = Path(tempfile.mkdtemp(prefix="harness-bench-"))
    data = work / "quiz.jsonl"
    write_dataset(data, args.rows)
    settings = {"artifact_path": model, "dataset_path": str(data), "harness": "multiple_choice",
                "max_rows": args.rows, "batch_size": args.batch_size, "skip_base": True}
    (work / "studio.yaml").write_text(json.dumps(settings))  # JSON is YAML
    tasks = work / "tasks"
    tasks.mkdir()
    task = write_task(EvaluateConfig.from_dict(settings), tasks)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "HF_DATASETS_CACHE": str(work / "datasets-cache")}
    lm_eval = str(Path(sys.executable).with_name("lm_eval"))
    arms = {
        "studio": [sys.executable, "-m", "tuning", "evaluate", str(work / "studio.yaml")],
        "lm_eval": [lm_eval, "run", "--model", "hf", "--model_args", f"pretrained={model}", "--tasks", task,
                    "--include_path", str(tasks), "--batch_size", str(args.batch_size), "--device", "cpu"],
    }
    seconds: dict[str, list[float]] = {"studio": [], "lm_eval": []}
    cpu: dict[str, list[float]] = {"studio": [], "lm_eval": []}
    load: dict[str, list[float]] = {"studio": [], "lm_eval": []}
    accuracy = {}
    for _ in range(args.rounds):
        for arm, command in arms.items():
            elapsed, used, stdout = timed(command, env)
            seconds[arm].append(round(elapsed, 1))
            cpu[arm].append(round(used, 1))
            load[arm].append(round(os.getloadavg()[1], 1))  # the 5-minute load average, as the arm ends
            accuracy[arm] = studio_acc(stdout) if arm == "studio" else cli_acc(stdout)
            print(f"{arm}: {elapsed:.1f} s wall, {used:.1f} s CPU, load {load[arm][-1]}, acc {accuracy[arm]}",
                  file=sys.stderr, flush=True)
    ratios = [s / c for s, c in zip(seconds["studio"], seconds["lm_eval"])]
    cpu_ratios = [s / c for s, c in zip(cpu["studio"], cpu["lm_eval"])]
    print(f"harness_speed: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; model {Path(model).name}; {args.rows} rows x 4 choices, "
          f"batch size {args.batch_size}, {args.rounds} alternating rounds")
    print("| arm | wall s per round | median | CPU s per round | median | load (5 min) | acc |")
    print("|---|---|---|---|---|---|---|")
    for arm in arms:
        print(f"| {arm} | {seconds[arm]} | {round(statistics.median(seconds[arm]), 1)} | {cpu[arm]} | "
              f"{round(statistics.median(cpu[arm]), 1)} | {load[arm]} | {accuracy[arm]} |")
    print(f"| studio ÷ lm_eval | {[round(r, 3) for r in ratios]} | {round(statistics.median(ratios), 3)} | "
          f"{[round(r, 3) for r in cpu_ratios]} | {round(statistics.median(cpu_ratios), 3)} | | "
          f"{'same' if abs(accuracy['studio'] - accuracy['lm_eval']) < 1e-4 else 'DIFFERENT'} |")
    print(json.dumps({"figure": "harness_studio_over_lm_eval_wall", "ratio": round(statistics.median(ratios), 3),
                      "round_ratios": [round(r, 3) for r in ratios], "rows": args.rows, "acc": accuracy,
                      "cpu_ratio": round(statistics.median(cpu_ratios), 3), "load": load,
                      "same_acc": abs(accuracy["studio"] - accuracy["lm_eval"]) < 1e-4, "goal": 1.1}))


if __name__ == "__main__":
    main()
