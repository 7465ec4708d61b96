"""Preference tuning speed: the studio's DPO against TRL's DPOTrainer.

    .venv/bin/python bench/preference_speed.py [--steps 8] [--rounds 3] [--model bundled|tiny|PATH]
                                               [--arms trl,studio,padded] [--reference base|precomputed]
                                               [--batch-size 4] [--max-length 512] [--device cpu|cuda]
                                               [--out BENCHMARKS-preference.md]

Arms, each in a child process of its own, alternating round by round
(trl, studio, padded, trl, …) so that a busy machine slows them alike:

- trl: ``trl.DPOTrainer`` (sigmoid loss) with peft LoRA, its defaults
  otherwise (padded batches of chosen and rejected rows, its fused
  log-probability head), gradient checkpointing off as in the studio.
- studio: ``python -m tuning train`` on task preference with its defaults:
  each pair's prompt computed once, the replies packed after it without
  padding, the output head only where a label is
  (``tuning.data.preference_packing``).
- padded: the same with ``packing: false`` (padded rows, chosen and rejected
  side by side, as TRL lays them out): the shared-prefix layout's own share.

Same model, the same token ids (the studio tokenizes the pairs once;
TRL's trainer is handed them as prompt/chosen/rejected ids, its own
tokenizing skipped), LoRA (r=16, alpha 32, no dropout: TRL's DPOTrainer
switches dropout off) on q,k,v,o, beta 0.1, batch size (pairs), max
length, steps, learning rate and cosine schedule, seed, threads, precision
(``--precision``: bf16 autocast on a GPU, fp32 on a CPU by default), and
the pairs of each step (TRL reads the studio's shuffled order
sequentially). The reference is the base model with the adapter switched
off in both arms, run every step (``--reference precomputed``: scored once
before training in both, TRL's ``precompute_ref_log_probs``).

Real tokens are each pair's chosen and rejected sequences (prompt and
reply, no padding), counted alike in both arms, between the end of step 1
and the end of the last step (loading, tokenizing and a precomputed
reference are left out). Memory is each arm's peak RSS on a CPU, its peak
GPU allocation on a GPU.

One JSON line per figure on stdout; ``--out`` also writes a markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import train_speed  # noqa: E402  (after the path: run as a script)
from bench.train_speed import (counting, emit, machine, model_dir_for, print_result, rate, run_child,  # noqa: E402
                               script_arm, tail_loss)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA = {"rank": 16, "alpha": 32.0, "dropout": 0.0}
BETA = 0.1
LOSS_TOLERANCE = 0.05  # final losses further apart than this (relative) void the speed comparison


def pairs_dataset(path: Path, rows: int = 256, seed: int = 0) -> Path:
    """Pairs whose prompts and replies vary in length: a counting task (a longer correct reply against
    one that stops early or skips) and short arithmetic (a right against a wrong sum)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        if rng.random() < 0.4:
            start = rng.randrange(1, 500)
            end = start + rng.randrange(10, 60)
            numbers = list(range(start, end + 1))
            skipped = [n for n in numbers if n != rng.choice(numbers[1:-1])]
            row = {"prompt": f"Please count from {start} to {end}, separating the numbers with commas, and end "
                             f"with a full stop.",
                   "chosen": ", ".join(map(str, numbers)) + ".",
                   "rejected": ", ".join(map(str, skipped if rng.random() < 0.5 else numbers[:len(numbers) // 2]))
                   + "."}
        else:
            a, b = rng.randrange(1, 100), rng.randrange(1, 100)
            row = {"prompt": f"What is {a} plus {b}?", "chosen": f"{a} plus {b} is {a + b}.",
                   "rejected": f"{a} plus {b} is {a + b + rng.choice([-2, -1, 1, 10])}."}
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def tokenized_pairs(spec: dict) -> list:
    """The studio's tokenized pairs in the order its loop trains on them."""
    from tuning.data.tasks import batches, load_task_data
    from tuning.models import load_tokenizer

    items = load_task_data("preference", spec["data"], tokenizer=load_tokenizer(spec["model"]),
                           max_length=spec["max_length"]).items
    return [e for batch in batches(items, batch_size=spec["batch_size"], seed=spec["seed"], epoch=0) for e in batch]


def dataset_stats(spec: dict) -> dict:
    from tuning.data.preference_packing import shared_prefix_length

    items = tokenized_pairs(spec)
    tokens = sum(len(e.chosen.input_ids) + len(e.rejected.input_ids) for e in items)
    shared = sum(shared_prefix_length(e.chosen.input_ids, e.rejected.input_ids) for e in items)
    labelled = sum(sum(1 for label in side.labels[1:] if label != -100)
                   for e in items for side in (e.chosen, e.rejected))
    return {"pairs": len(items), "mean_tokens_per_pair": tokens / len(items), "shared_prefix_share": shared / tokens,
            "labelled_share": labelled / tokens}


# --- arms ---------------------------------------------------------------------

def studio_arm(spec: dict, packing: bool, workdir: Path) -> dict:
    import yaml

    config = {"base_model": spec["model"], "dataset_path": spec["data"], "output_dir": str(workdir / "out"),
              "cache_dir": str(Path(spec["workdir"]) / "token-cache"), "task": "preference",
              "preference_loss": "dpo", "beta": BETA, "reference": spec["reference"], "method": "lora",
              "method_params": {**LORA, "target_modules": ",".join(TARGETS)}, "max_steps": spec["steps"],
              "batch_size": spec["batch_size"], "max_length": spec["max_length"], "learning_rate": spec["lr"],
              "warmup_ratio": 0.0, "scheduler": "cosine", "seed": spec["seed"], "precision": spec["precision"],
              "save_every": 10**6, "packing": packing}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run.yaml").write_text(yaml.safe_dump(config))
    out, _, wall, rss = run_child([sys.executable, "-m", "tuning", "train", str(workdir / "run.yaml")],
                                  spec["threads"])
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    metrics = [e["data"] for e in events if e["kind"] == "metrics"]
    logs = [e["data"]["message"] for e in events if e["kind"] == "log"]
    if packing != any("prompt computed once" in m for m in logs):
        raise SystemExit(f"the studio run's layout is not the one asked for (packing {packing}): {logs}")
    return {"tokens_per_s": rate([m["elapsed_s"] for m in metrics], [m["tokens_seen"] for m in metrics]),
            "losses": [m["loss"] for m in metrics], "margins": [m["reward_margin"] for m in metrics],
            "wall_s": wall, "peak_mib": max(m["memory_mib"] for m in metrics) if spec["device"] == "cuda" else rss}


def trl_arm(spec: dict, workdir: Path) -> dict:
    result = script_arm(spec, workdir, script=__file__, flag="--child-trl")
    return {**result, "peak_mib": result["peak_rss_mib"]}


def child_trl(spec_file: str) -> None:
    """TRL's DPOTrainer on the studio's token ids (in its own process)."""
    spec = json.loads(Path(spec_file).read_text())
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    rows = []
    for e in tokenized_pairs(spec):
        prompt = next(i for i, label in enumerate(e.chosen.labels) if label != -100)
        assert e.chosen.input_ids[:prompt] == e.rejected.input_ids[:prompt], "the two sides' prompts differ"
        rows.append({"prompt_ids": e.chosen.input_ids[:prompt], "chosen_ids": e.chosen.input_ids[prompt:],
                     "rejected_ids": e.rejected.input_ids[prompt:]})

    class PreTokenized(DPOTrainer):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset  # already the studio's prompt/chosen/rejected ids

    args = DPOConfig(output_dir=spec["output_dir"], per_device_train_batch_size=spec["batch_size"],
                     max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="cosine", warmup_steps=0,
                     weight_decay=0.0, max_grad_norm=1.0, bf16=spec["precision"] == "bf16",
                     use_cpu=spec["device"] == "cpu",
                     logging_steps=1, save_strategy="no", report_to=[], seed=spec["seed"], dataloader_num_workers=0,
                     disable_tqdm=True, train_sampling_strategy="sequential", gradient_checkpointing=False,
                     beta=BETA, loss_type=["sigmoid"], max_length=spec["max_length"],
                     precompute_ref_log_probs=spec["reference"] == "precomputed")
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    lora = LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules=TARGETS,
                      task_type="CAUSAL_LM")
    trainer = counting(PreTokenized)(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                     processing_class=AutoTokenizer.from_pretrained(spec["model"]), peft_config=lora)
    trainer.train()
    print_result(trainer, spec, margins=[e.get("rewards/margins") for e in trainer.state.log_history if "loss" in e])


# --- the comparison -----------------------------------------------------------

def summarise(runs: dict[str, list[dict]], lines: list[dict]) -> None:
    speed = {arm: [r["tokens_per_s"] for r in rs] for arm, rs in runs.items()}
    memory = "peak_gpu_mib" if train_speed.DEVICE == "cuda" else "peak_rss_mib"
    for arm in [a for a in ("studio", "padded") if a in runs and "trl" in runs]:
        ratios = [s / t for s, t in zip(speed[arm], speed["trl"])]  # within a round: same machine load
        trl_loss = statistics.mean(tail_loss(r["losses"]) for r in runs["trl"])
        arm_loss = statistics.mean(tail_loss(r["losses"]) for r in runs[arm])
        emit({"figure": "real_tokens_per_s", "arm": arm, "trl": round(statistics.mean(speed["trl"]), 1),
              arm: round(statistics.mean(speed[arm]), 1), "ratio": round(statistics.median(ratios), 3),
              "round_ratios": [round(x, 3) for x in ratios]}, lines)
        emit({"figure": memory, "arm": arm, "trl": round(max(r["peak_mib"] for r in runs["trl"])),
              arm: round(max(r["peak_mib"] for r in runs[arm]))}, lines)
        emit({"figure": "final_loss", "arm": arm, "trl": round(trl_loss, 4), arm: round(arm_loss, 4),
              "similar": abs(arm_loss - trl_loss) <= LOSS_TOLERANCE * trl_loss}, lines)
    if "studio" in runs and "padded" in runs:
        ratios = [s / p for s, p in zip(speed["studio"], speed["padded"])]
        emit({"figure": "shared_vs_padded", "studio": round(statistics.mean(speed["studio"]), 1),
              "padded": round(statistics.mean(speed["padded"]), 1), "ratio": round(statistics.median(ratios), 3),
              "round_ratios": [round(x, 3) for x in ratios]}, lines)


def markdown(lines: list[dict], info: dict, args) -> str:
    out = ["# Preference tuning speed (DPO)", "",
           f"Generated by `{' '.join(['.venv/bin/python', 'bench/preference_speed.py'] + sys.argv[1:])}` on "
           f"{info['date']}: {info['cpu']}, {info['cores']} cores, torch {info['torch']}; {args.threads} threads, "
           f"{args.precision or 'fp32 (CPU) / bf16 (GPU)'}, LoRA r=16 on q,k,v,o, DPO sigmoid beta {BETA}, "
           f"batch size {args.batch_size} pairs, "
           f"max length {args.max_length}, {args.steps} steps, {args.rounds} alternating rounds per arm, reference "
           f"{args.reference}. Model: {args.model}.", "",
           "| figure | TRL DPOTrainer | studio | padded studio | ratio | note |", "|---|---|---|---|---|---|"]
    for r in lines:
        if r["figure"] in ("real_tokens_per_s", "peak_rss_mib", "peak_gpu_mib", "final_loss"):
            note = {"final_loss": "similar" if r.get("similar") else "NOT similar: speed does not count",
                    "real_tokens_per_s": f"rounds {r.get('round_ratios')}"}.get(r["figure"], "")
            out.append(f"| {r['figure']} ({r['arm']}) | {r['trl']} | {r.get('studio', '')} | {r.get('padded', '')} "
                       f"| {r.get('ratio', '')} | {note} |")
        elif r["figure"] == "shared_vs_padded":
            out.append(f"| shared-prefix vs padded tokens/s | | {r['studio']} | {r['padded']} | {r['ratio']} | "
                       f"rounds {r['round_ratios']} |")
        elif r["figure"] == "dataset":
            out.append(f"| data | | {r['pairs']} pairs, {r['mean_tokens_per_pair']} tokens a pair | | | shared "
                       f"prefix {r['shared_prefix_share']}, labelled {r['labelled_share']} of the tokens |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="bundled", help="bundled, tiny, or a model directory")
    parser.add_argument("--arms", default="trl,studio,padded")
    parser.add_argument("--reference", choices=["base", "precomputed"], default="base")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=__import__("os").cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["bf16", "fp32"],
                        help="both arms (default: bf16 on a GPU, fp32 on a CPU: a CPU without AVX-512 BF16 or AMX "
                             "multiplies bf16 matrices about 20x slower than fp32 ones)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where every arm runs (default: cuda if present)")
    parser.add_argument("--out", help="write the markdown table here")
    parser.add_argument("--child-trl", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_trl:
        child_trl(args.child_trl)
        return
    import torch

    train_speed.DEVICE = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model_dir = model_dir_for(args.model)
    workdir = Path(tempfile.mkdtemp(prefix="preference-speed-"))
    spec = {"model": str(model_dir), "data": str(pairs_dataset(workdir / "pairs.jsonl")), "steps": args.steps,
            "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr, "seed": args.seed,
            "threads": args.threads, "workdir": str(workdir), "device": train_speed.DEVICE,
            "reference": args.reference,
            "precision": args.precision or ("bf16" if train_speed.DEVICE == "cuda" else "fp32")}
    lines: list[dict] = []
    emit({"figure": "dataset", **{k: round(v, 3) for k, v in dataset_stats(spec).items()}}, lines)
    arms = args.arms.split(",")
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for round_ in range(args.rounds):
        for arm in arms:
            where = workdir / f"{arm}-{round_}"
            result = trl_arm(spec, where) if arm == "trl" else studio_arm(spec, arm == "studio", where)
            runs[arm].append(result)
            print(json.dumps({"run": arm, "round": round_ + 1, "tokens_per_s": round(result["tokens_per_s"], 1),
                              "peak_mib": round(result["peak_mib"]), "wall_s": round(result["wall_s"], 1),
                              "losses": [round(x, 4) for x in result["losses"]]}), file=sys.stderr, flush=True)
    summarise(runs, lines)
    if args.out:
        Path(args.out).write_text(markdown(lines, machine(), args))


if __name__ == "__main__":
    main()
