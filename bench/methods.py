"""Train every method on the bundled model with the sample data and write
a table (trainable %, tokens/s, peak memory, final eval loss) to
docs/METHODS.md.

    .venv/bin/python bench/methods.py [--steps 10] [--only lora,ia3]

Each method runs in its own `python -m tuning train` process, so peak
memory is that method's alone. The comparable figure per row is its
tokens/s relative to LoRA's in the same command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tuning.methods import METHODS  # noqa: E402
from tuning.models import prepare_bundled_model  # noqa: E402

SAMPLE = REPO / "samples" / "instructions-sample.jsonl"


def run_method(name: str, model_dir: Path, steps: int, workdir: Path) -> dict:
    method = METHODS[name]
    config = {"base_model": str(model_dir), "dataset_path": str(SAMPLE), "output_dir": str(workdir / name),
              "method": name, "max_steps": steps, "batch_size": 4, "max_length": 256, "validation_ratio": 0.1,
              "save_every": 10**6, "seed": 0}
    config.update({k: v for k, v in method.presets.get("quick", {}).items() if k in ("learning_rate",
                                                                                        "method_params")})
    config_file = workdir / f"{name}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tuning", "train", str(config_file)], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"method": name, "error": (done.stderr.strip().splitlines() or ["failed"])[-1][:160]}
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    metrics = [e["data"] for e in events if e["kind"] == "metrics"]
    evals = [e["data"] for e in events if e["kind"] == "eval"]
    artifact = next(e["data"]["metadata"] for e in events if e["kind"] == "artifact")
    speeds = [m["tokens_per_s"] for m in metrics[1:]] or [metrics[0]["tokens_per_s"]]  # step 1 warms up
    return {"method": name, "label": method.label, "group": method.group,
            "trainable_pct": 100 * artifact["trainable_parameters"] / artifact["total_parameters"],
            "tokens_per_s": sum(speeds) / len(speeds), "peak_mib": metrics[-1]["memory_mib"],
            "first_loss": metrics[0]["loss"], "final_loss": metrics[-1]["loss"],
            "eval_loss": evals[-1]["eval_loss"] if evals else None, "wall_s": time.monotonic() - started}


MERGE_SECTION = "## Merge methods"


def write_table(rows: list[dict], steps: int, path: Path) -> None:
    lora = next((r["tokens_per_s"] for r in rows if r["method"] == "lora" and "error" not in r), None)
    lines = [
        "# Methods on the bundled model", "",
        f"`python bench/methods.py --steps {steps}` on {platform.machine()} with {os.cpu_count()} cores, "
        f"torch threads default; SmolLM2-135M-Instruct, the sample data (50 rows, 10% held out), batch 4, "
        f"max length 256, {steps} steps, the method's quick preset learning rate.", "",
        "| method | group | trainable % | tokens/s | vs LoRA | peak MiB | first loss | final loss | eval loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | | | | | | | | not run: {r['error'].removeprefix('error: ')} |")
            continue
        ratio = f"{r['tokens_per_s'] / lora:.2f}" if lora else "n/a"
        eval_loss = f"{r['eval_loss']:.4f}" if r["eval_loss"] is not None else "n/a"
        lines.append(f"| {r['label']} | {r['group']} | {r['trainable_pct']:.3f} | {r['tokens_per_s']:.0f} | {ratio} "
                     f"| {r['peak_mib']:.0f} | {r['first_loss']:.4f} | {r['final_loss']:.4f} | {eval_loss} |")
    lines += ["", "GPU-only methods (QLoRA) are not run on a CPU. AdaLoRA's losses are the task's cross-entropy, "
                  "like the others'; its orthogonality penalty is reported apart (the metrics' `penalty`).", ""]
    # Sections written by hand after the table (the merge methods) are kept.
    kept = path.read_text().partition(MERGE_SECTION)[1:] if path.exists() else ("", "")
    path.write_text("\n".join(lines) + ("\n" + "".join(kept) if kept[0] else ""))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", default="", help="comma-separated method names")
    parser.add_argument("--out", default=str(REPO / "docs" / "METHODS.md"))
    args = parser.parse_args()
    names = [n for n in METHODS if not METHODS[n].needs_cuda and (not args.only or n in args.only.split(","))]
    names.sort(key=lambda n: n != "lora")  # the baseline first
    model_dir = prepare_bundled_model(REPO / ".cache" / "bench" / "smollm2-135m-instruct")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in names:
            row = run_method(name, model_dir, args.steps, Path(workdir))
            rows.append(row)
            print(json.dumps(row), flush=True)
    write_table(rows, args.steps, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
