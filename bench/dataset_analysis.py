"""Token counting of a dataset analysis against `datasets.map` with the fast
tokenizer, batched: rows per second and peak memory (issue 23).

    .venv/bin/python bench/dataset_analysis.py [--rows 100000] [--rounds 3]

Writes ``--rows`` instruction/output rows of mixed lengths to a JSONL file,
then alternates two arms, each in a fresh process that loads the bundled
model's tokenizer (the tests' tiny model carries it) before its clock starts:

- studio: what an ``analyse`` job runs to count tokens
  (``tuning.data.readers.read_examples`` then ``tuning.data.stats.token_stats``:
  every row rendered through the chat template, the reply's tokens labelled);
- datasets: ``load_dataset("json")`` then ``Dataset.map(batched=True)`` that
  renders the same chat (``apply_chat_template``) and tokenizes the batch
  with the fast tokenizer, keeping each row's length: what a user would
  write by hand.

The figure is rows/s studio ÷ datasets, the median of per-round ratios (goal
≥ 1.0), and each arm's peak resident memory (the whole process). The lint
part of an analysis (duplicates, empty replies) is not in either arm.
Prints one JSON line per run and a summary line with "figure".
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WORDS = "the model reads each row and learns which answer follows which question in this data".split()


def write_rows(path: Path, rows: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as handle:
        for n in range(rows):
            words = rng.choice([8, 20, 60, 200])  # short chat turns to long answers
            handle.write(json.dumps({"instruction": f"Question {n}: " + " ".join(rng.choices(WORDS, k=8)),
                                     "output": " ".join(rng.choices(WORDS, k=words))}) + "\n")
    return path


def _studio(path: str, tokenizer) -> int:
    from tuning.data.readers import read_examples
    from tuning.data.stats import token_stats

    return token_stats(read_examples(path), tokenizer, max_length=2048).total_tokens


def _datasets(path: str, tokenizer, cache: str) -> int:
    from datasets import disable_progress_bars, load_dataset

    disable_progress_bars()

    def lengths(batch):
        chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                 for q, a in zip(batch["instruction"], batch["output"])]
        texts = tokenizer.apply_chat_template(chats, tokenize=False)
        return {"length": [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]}

    data = load_dataset("json", data_files=path, split="train", cache_dir=cache)
    counted = data.map(lengths, batched=True, batch_size=1000, remove_columns=data.column_names,
                       cache_file_name=f"{cache}/lengths.arrow")
    return sum(counted["length"])


def child(arm: str, path: str, cache: str) -> None:
    from transformers import AutoTokenizer

    from tests.tiny_model import tiny_model_dir

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir())
    started = time.perf_counter()
    tokens = _studio(path, tokenizer) if arm == "studio" else _datasets(path, tokenizer, cache)
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"seconds": seconds, "tokens": tokens, "peak_mib": peak_mib}), flush=True)


def run_arm(arm: str, path: Path, work: Path) -> dict:
    cache = tempfile.mkdtemp(dir=work)  # a fresh datasets cache: no arm reads another round's work
    done = subprocess.run([sys.executable, __file__, "--child", arm, str(path), cache], capture_output=True,
                          text=True, cwd=REPO)
    if done.returncode:
        raise SystemExit(f"{arm} arm failed:\n{done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    path = write_rows(work / "rows.jsonl", args.rows)
    runs: dict[str, list[dict]] = {"studio": [], "datasets": []}
    for round_ in range(args.rounds):
        for arm in (("studio", "datasets") if round_ % 2 == 0 else ("datasets", "studio")):
            result = run_arm(arm, path, work)
            runs[arm].append(result)
            print(json.dumps({"run": arm, "round": round_ + 1, "rows_per_s": round(args.rows / result["seconds"]),
                              "tokens": result["tokens"], "peak_mib": round(result["peak_mib"])}), flush=True)
    ratios = [d["seconds"] / s["seconds"] for s, d in zip(runs["studio"], runs["datasets"])]
    print(json.dumps({
        "figure": "dataset_analysis_rows_per_s", "rows": args.rows,
        "studio_rows_per_s": round(args.rows / statistics.median(r["seconds"] for r in runs["studio"])),
        "datasets_rows_per_s": round(args.rows / statistics.median(r["seconds"] for r in runs["datasets"])),
        "ratio": round(statistics.median(ratios), 3), "round_ratios": [round(r, 3) for r in ratios],
        "studio_peak_mib": round(max(r["peak_mib"] for r in runs["studio"])),
        "datasets_peak_mib": round(max(r["peak_mib"] for r in runs["datasets"])),
        "same_tokens": len({r["tokens"] for r in runs["studio"]} | {r["tokens"] for r in runs["datasets"]}) == 1,
        "goal": 1.0}), flush=True)


if __name__ == "__main__":
    main()
