"""Training speed: the studio's loop against the usual transformers recipe.

    .venv/bin/python bench/train_speed.py [--steps 8] [--rounds 2] [--model bundled|tiny|PATH]
                                          [--datasets sample,mixed] [--arms ref,studio,padded]
                                          [--device cpu|cuda] [--batch-size 4] [--out BENCHMARKS.md]
                                          [--method lora|full] [--precision auto|bf16|fp32]

On a GPU (``--device cuda``, the default where one is present) every arm
trains there, memory is each arm's peak GPU allocation and the peak is a
8192³ matmul on the GPU.

Precision (``--precision``, the same in both arms): ``auto`` (the default)
is what the studio's ``precision: auto`` picks on the device, so the
figures are what a user of this machine gets: bf16 autocast on a GPU and on
a CPU that computes bf16 natively (AVX512-BF16, AMX), fp32 on other CPUs,
where oneDNN emulates bf16 some 30x slower. ``bf16`` or ``fp32`` force one;
the Trainer gets ``bf16=True`` (or ``fp16=True``) or neither.

Arms, each run in a child process of its own, alternating round by round
(ref, studio, padded, ref, studio, padded, …) so that a busy machine slows
them alike:

- ref: transformers ``Trainer`` + peft LoRA + ``DataCollatorForSeq2Seq``
  (dynamic padding to the longest row of each batch): the way most users
  fine-tune. With ``--method full`` the same Trainer without peft, every
  weight trained (its default AdamW).
- studio: ``python -m tuning train CONFIG.yaml`` with its defaults (packing on);
  ``--method full``: the studio's ``full`` method.
- padded: the same with ``packing: false`` (issue 4's packed-vs-padded figure).
- grouped: padded, with ``group_by_length: true`` (the lever for runs that cannot pack).
- before: the studio arm run from another checkout (``--before DIR``, e.g. ``git worktree add DIR main``):
  a lever's figure is studio ÷ before, measured in the same alternating rounds.

Besides the arms it times one optimizer step of AdamW (default foreach
vs fused) over the base model's full parameter set, the lever that matters
for full fine-tuning.

Same model, tokenized rows (both use ``tuning.data.tasks.load_task_data``),
LoRA (r=16, alpha 32, dropout 0.05 on q,k,v,o), batch size, max length,
steps, learning rate and schedule, seed, threads (OMP_NUM_THREADS),
precision, and the rows of each step (the reference reads the studio's
shuffled order sequentially; only the adapters' random initialisation
differs). Throughput counts real (non-padding) tokens between the end of
step 1 and the end of the last step, so loading and warm-up are left out.

Model FLOPs per real token (for MFU), with N the weights of the base
model's linear layers (output head included, embedding lookup not) and
N_a the LoRA weights: the frozen base costs its forward (2·N) and the
gradient with respect to its inputs (2·N) but no weight gradient, so
4·N instead of full fine-tuning's 6·N; the adapters cost 6·N_a. The
output head's share of N is counted only on tokens whose next token
carries loss (the prompt's logits are never needed; the reference computes
them anyway, the studio does not), which lowers both arms' MFU. Attention
adds, per example of n tokens and per layer, 2·n²·d in the forward
(QKᵀ and AV with the causal half) and twice that backward: 6·L·d·n².
MFU = achieved model FLOP/s ÷ peak ``torch.matmul`` FLOP/s in the run's
precision (fp32 or bf16) measured by this script on this machine with the same thread count (best of the
measurements taken between rounds). Padding is not counted as work, so a
padded run's MFU is what its useful work achieved.

One JSON line per figure on stdout; ``--out`` also writes the markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sections import write_section  # noqa: E402  (after the path: run as a script)

SAMPLE = REPO / "samples" / "instructions-sample.jsonl"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LORA = {"rank": 16, "alpha": 32.0, "dropout": 0.05}
LOSS_TOLERANCE = 0.10  # final losses further apart than this (relative) void the speed comparison
DEVICE = "cpu"  # --device: where every arm runs; on "cuda" memory is the GPU's peak allocation
METHOD = "lora"  # --method: LoRA in both arms, or full fine-tuning in both
PRECISION = "fp32"  # --precision after "auto" is resolved: "fp32", "bf16" or "fp16" (GPU), both arms
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_precision(requested: str) -> str:
    """``auto`` as the studio resolves it (``tuning.train_model.device_and_autocast``) on DEVICE."""
    import torch

    from tuning.train_model import cpu_has_native_bf16

    if requested != "auto":
        return requested
    if DEVICE == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


# --- data ---------------------------------------------------------------------

def mixed_dataset(path: Path, rows: int = 400, seed: int = 0) -> Path:
    """Many short rows and some long ones (a quarter), where padding to the
    longest row of a batch wastes most of the batch."""
    rng = random.Random(seed)
    lines = []
    for _ in range(rows):
        if rng.random() < 0.25:
            start = rng.randrange(1, 500)
            end = start + rng.randrange(40, 120)
            row = {"instruction": f"Count from {start} to {end}.",
                   "output": ", ".join(str(n) for n in range(start, end + 1)) + "."}
        else:
            a, b = rng.randrange(1, 100), rng.randrange(1, 100)
            row = {"instruction": f"What is {a} plus {b}?", "output": f"{a} plus {b} is {a + b}."}
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def dataset_stats(path: Path, model_dir: Path, max_length: int) -> dict:
    from tuning.data.tasks import load_task_data
    from tuning.models import load_tokenizer

    items = load_task_data("sft", path, tokenizer=load_tokenizer(str(model_dir)), max_length=max_length).items
    lengths = [len(e.input_ids) for e in items]
    labelled = sum(sum(1 for label in e.labels[1:] if label != -100) for e in items)
    return {"rows": len(lengths), "mean_tokens": sum(lengths) / len(lengths), "max_tokens": max(lengths),
            "sum_sq_over_sum": sum(n * n for n in lengths) / sum(lengths),
            "labelled_fraction": labelled / sum(lengths)}


# --- FLOPs --------------------------------------------------------------------

def model_shape(model_dir: Path) -> dict:
    """Linear weights of the base (N), LoRA weights (N_a), layers and width."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear, adapter = 0, 0
    head = model.get_output_embeddings()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            linear += module.in_features * module.out_features + (module.out_features if module.bias is not None else 0)
            if METHOD == "lora" and name.rsplit(".", 1)[-1] in TARGETS:
                adapter += LORA["rank"] * (module.in_features + module.out_features)
    return {"linear_params": linear, "head_params": head.in_features * head.out_features,
            "adapter_params": adapter, "layers": config.num_hidden_layers, "hidden": config.hidden_size}


def flops_per_token(shape: dict, sum_sq_over_sum: float, labelled_fraction: float) -> float:
    head = shape["head_params"]  # needed only where the next token carries loss
    per_weight = 4 if METHOD == "lora" else 6  # a frozen base has no weight gradients; full fine-tuning does
    dense = (per_weight * (shape["linear_params"] - head) + per_weight * head * labelled_fraction
             + 6 * shape["adapter_params"])
    attention = 6 * shape["layers"] * shape["hidden"] * sum_sq_over_sum  # Σ 6·L·d·n² / Σ n
    return dense + attention


def peak_matmul_flops(threads: int, size: int = 2048, repeats: int = 8) -> float:
    import torch

    torch.set_num_threads(threads)
    size = 8192 if DEVICE == "cuda" else size  # a GPU needs a larger product to reach its peak
    dtype = getattr(torch, DTYPES[PRECISION])  # the precision the arms' matmuls run in
    a = torch.randn(size, size, dtype=dtype, device=DEVICE)
    b = torch.randn(size, size, dtype=dtype, device=DEVICE)
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    torch.matmul(a, b)
    sync()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best


# --- children -----------------------------------------------------------------

def run_child(command: list[str], threads: int, repo: Path = REPO) -> tuple[str, str, float, float]:
    """Run ``command`` in checkout ``repo``; its stdout, stderr, wall seconds and own peak RSS (MiB)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    if DEVICE == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the studio trains on a GPU wherever it sees one
    with tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        proc = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage alone (RUSAGE_CHILDREN is a max over all)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - started
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({proc.returncode}):\n{stderr[-3000:]}")
    return out, stderr, wall, usage.ru_maxrss / 1024


def rate(times: list[float], tokens: list[int]) -> float:
    """Real tokens per second from the end of step 1 to the end of the last step."""
    return (tokens[-1] - tokens[0]) / (times[-1] - times[0])


def tail_loss(losses: list[float]) -> float:
    """Mean loss over the last half of the steps (one step's batch is noisy)."""
    half = losses[len(losses) // 2:]
    return sum(half) / len(half)


def adamw_step_seconds(model_dir: Path, threads: int, repeats: int = 4) -> dict:
    """One AdamW step over every parameter of the base model (full fine-tuning), per implementation."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(threads)
    with torch.device("meta"):
        shapes = [p.shape for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir)).parameters()]
    params = [torch.nn.Parameter(torch.randn(shape, device=DEVICE)) for shape in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizers = {"foreach": torch.optim.AdamW(params, lr=1e-5, foreach=True),
                  "fused": torch.optim.AdamW(params, lr=1e-5, fused=True)}
    best = {name: float("inf") for name in optimizers}
    for _ in range(repeats):
        for name, optimizer in optimizers.items():  # alternating, like the arms
            started = time.perf_counter()
            optimizer.step()
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def dropout_seconds(hidden: int, tokens: int, threads: int, repeats: int = 20) -> dict:
    """Forward and backward of LoRA's input dropout (p = LORA["dropout"]) on one adapted module's input of
    ``tokens`` × ``hidden``: peft's dense ``nn.Dropout`` against the studio's ``SparseDropout``."""
    import torch

    from tuning.sparse_dropout import sparse_dropout_class

    torch.set_num_threads(threads)
    x = torch.randn(tokens, hidden, device=DEVICE, requires_grad=True)
    modules = {"dense": torch.nn.Dropout(LORA["dropout"]), "sparse": sparse_dropout_class()(LORA["dropout"])}
    best = {name: float("inf") for name in modules}
    for _ in range(repeats):
        for name, module in modules.items():  # alternating
            started = time.perf_counter()
            module(x).sum().backward()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def studio_arm(spec: dict, packing: bool, workdir: Path, group_by_length: bool = False, repo: Path = REPO) -> dict:
    import yaml

    config = {"base_model": spec["model"], "dataset_path": spec["data"], "output_dir": str(workdir / "out"),
              "cache_dir": str(Path(spec["workdir"]) / "token-cache"), "method": spec["method"],
              "method_params": {**LORA, "target_modules": ",".join(TARGETS)} if spec["method"] == "lora" else {},
              "max_steps": spec["steps"],
              "batch_size": spec["batch_size"], "max_length": spec["max_length"], "learning_rate": spec["lr"],
              "warmup_ratio": 0.0, "scheduler": "cosine", "seed": spec["seed"], "precision": spec["precision"],
              "save_every": 10**6, "packing": packing, "group_by_length": group_by_length}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run.yaml").write_text(yaml.safe_dump(config))
    out, _, wall, rss = run_child([sys.executable, "-m", "tuning", "train", str(workdir / "run.yaml")],
                                  spec["threads"], repo)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    metrics = [e["data"] for e in events if e["kind"] == "metrics"]
    logs = [e["data"]["message"] for e in events if e["kind"] == "log"]
    # packing refused (a probe failing, as bf16 rounding once made it) would make this arm a padded one unawares
    if packing and any(m.startswith("Padded batches instead of packed ones") for m in logs):
        raise SystemExit(f"the studio run could not pack: {logs}")
    return {"tokens_per_s": rate([m["elapsed_s"] for m in metrics], [m["tokens_seen"] for m in metrics]),
            "layout": "packed" if any(m.startswith("Packing rows") for m in logs) else "padded",
            "losses": [m["loss"] for m in metrics], "wall_s": wall,
            "peak_rss_mib": max(m["memory_mib"] for m in metrics) if DEVICE == "cuda" else rss}


def script_arm(spec: dict, workdir: Path, *, script: str = __file__, flag: str = "--child-ref") -> dict:
    """Run ``script flag SPEC.json`` (an arm in its own process): its RESULT line, with its peak memory
    (GPU where it reports one, else RSS) as ``peak_rss_mib`` and its wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "spec.json").write_text(json.dumps({**spec, "output_dir": str(workdir / "out")}))
    out, _, wall, rss = run_child([sys.executable, script, flag, str(workdir / "spec.json")], spec["threads"])
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    return {**result, "peak_rss_mib": result.get("gpu_peak_mib", rss), "wall_s": wall}


def child_ref(spec_file: str) -> None:
    """The reference run (in its own process): Trainer + peft (or every weight) + dynamic padding."""
    spec = json.loads(Path(spec_file).read_text())
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    from tuning.data.tasks import batches, load_task_data

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    items = load_task_data("sft", spec["data"], tokenizer=tokenizer, max_length=spec["max_length"]).items
    # The studio's batch order, read sequentially: step k trains on the same
    # rows in both arms, so their losses are comparable step by step.
    items = [e for batch in batches(items, batch_size=spec["batch_size"], seed=spec["seed"], epoch=0) for e in batch]
    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels} for e in items]
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    if spec["method"] == "lora":
        model = get_peft_model(model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"],
                                                 lora_dropout=LORA["dropout"], target_modules=TARGETS,
                                                 task_type="CAUSAL_LM"))

    args = TrainingArguments(output_dir=spec["output_dir"], per_device_train_batch_size=spec["batch_size"],
                             max_steps=spec["steps"], learning_rate=spec["lr"], lr_scheduler_type="cosine",
                             warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, bf16=spec["precision"] == "bf16",
                             fp16=spec["precision"] == "fp16", use_cpu=spec["device"] == "cpu",
                             logging_steps=1, save_strategy="no", report_to=[], seed=spec["seed"],
                             dataloader_num_workers=0, disable_tqdm=True, train_sampling_strategy="sequential")
    trainer = counting(Trainer)(model=model, args=args, train_dataset=rows,
                                data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
    trainer.train()
    print_result(trainer, spec)


def counting(trainer_class):
    """``trainer_class`` counting the real (non-padding) tokens it trains on and marking (time, tokens so far)
    at the end of every step in ``marks``."""
    from transformers import TrainerCallback

    class Counting(trainer_class):
        real_tokens = 0

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.marks: list[tuple[float, int]] = []
            trainer = self

            class Clock(TrainerCallback):
                def on_step_end(self, args, state, control, **kwargs):
                    trainer.marks.append((time.monotonic(), trainer.real_tokens))

            self.add_callback(Clock())

        def compute_loss(self, model, inputs, *args, **kwargs):
            self.real_tokens += int(inputs["attention_mask"].sum())  # the rows' own tokens, not padding
            return super().compute_loss(model, inputs, *args, **kwargs)

    return Counting


def print_result(trainer, spec: dict, **extra) -> None:
    """The RESULT line a ``--child-*`` arm prints: real tokens/s, each step's loss, the GPU's peak."""
    import torch

    marks = trainer.marks
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print("RESULT " + json.dumps({"tokens_per_s": rate([t for t, _ in marks], [n for _, n in marks]),
                                  "losses": losses, **extra,
                                  **({"gpu_peak_mib": torch.cuda.max_memory_allocated() / 2**20}
                                     if spec["device"] == "cuda" else {})}), flush=True)


# --- the comparison -----------------------------------------------------------

LEVERS = """## Levers in the loop

Measured on the mixed-length data with `--datasets mixed --arms ref,studio --rounds 2 --steps 6`, one lever
added at a time (studio ÷ reference real tokens/s; peak RSS studio vs reference), unless the row says otherwise.
Since 2026-12-07 a lever is measured in the same alternating rounds as its before: `--arms ref,studio,before
--before DIR` with DIR a checkout without it (`studio vs studio before the lever` row).

| lever | verdict | evidence |
|---|---|---|
| packing (`packing: true`, default) | kept | `packed vs padded` rows above; same loss and gradients as padded \
(tests/core/test_fast_path.py) |
| choosing padding instead of packing for batches of similar lengths | not done (2026-12-07) | the sample data's \
batches are 5.4% padding (1-7.7% per batch of 4; the mixed data's 55%), so the choice could gain at most ~5% there, \
and the packed-vs-padded figures on those rows (1.03x on 2026-11-22, 0.95x in a later side-by-side run) are noise of \
that size; a threshold needs a quiet-machine measurement of the packed path's own cost |
| segment attention (`tuning/attention.py`): causal sdpa on each packed example's own slice, no mask | kept on \
CPUs; dropped on GPUs, where its small calls cost 0.25x-0.95x the Trainer's speed on an H100 \
([docs/benchmarks-gpu.md](docs/benchmarks-gpu.md)) | 1.36x before, 1.57x with it and the next lever (peak 5742 → \
5362 MiB); attention is Σn² instead of (Σn)², and sdpa keeps its grouped-query path |
| logits only where a label is (`next_token_loss`) | kept as the fallback of the next | the prompt's positions \
need no logits (27% of the mixed data's tokens, 80% of the sample data's) |
| output head + cross-entropy fused a chunk of 128 tokens at a time (1,024 on a GPU) (`fused_next_token_loss`) | \
kept (on an H100 the padded studio run with it: 1.29x the Trainer at about half its memory) | 1.57x → 1.84x, peak \
5362 → 4476 MiB (reference 5312): no batch-wide logits; the gradient is computed in the same pass, nothing \
recomputed; probed against the model's own loss per model |
| LoRA input dropout drawn sparsely on a CPU (`tuning/sparse_dropout.py`: the dropped positions as running sums \
of Geometric(p) gaps, one draw per dropped entry instead of a Bernoulli draw per entry) | measured, not used in \
the loop (2026-12-07): in fp32 on this CPU dense dropout is about 4% of a step | in-loop, alternating steps on \
one model (`bench/train_profile.py --precision fp32 --compare-dropout 10`, 1 thread, CPU time): dense 16.5 vs \
sparse 17.3 CPU s per 1,000 tokens (0.96x; steps vary ±5%); one module's input alone: \
the `LoRA input dropout ms` row above (one module's input, forward + backward); the same distribution as \
peft's `nn.Dropout` (tests/core/test_sparse_dropout.py: rate p per position, Binomial counts, independent \
neighbours, scale 1/(1-p), gradient only through kept entries) |
| one dropout mask shared by q, k and v (they read the same input) | not done | peft draws one mask per adapted \
module; a shared mask correlates the three modules' noise: a different regulariser, not the same training |
| dense dropout masks in a cheaper dtype | not done | the cost is the random draw per entry (`bernoulli_`), not \
the mask's dtype; the sparse draw makes p·n draws instead of n |
| length-grouped batches (`group_by_length`) | kept, off by default | changes which rows share a step, so \
opt-in, for runs that cannot pack |
| bf16 autocast on CPU | only where the CPU computes bf16 natively (2026-12-06) | FIELD-NOTES: 4.1-4.6 s/step \
bf16 vs 6.4 s fp32 on a CPU with native bf16; on an AVX2-only AMD EPYC (2 cores) emulated bf16 took 90 s per \
135M step against 2.8 s in fp32, so `precision=auto` picks fp32 there (and this script's `--precision auto` \
with it) |
| frozen LoRA base stored in bf16 | kept (bf16 runs only) | no per-step weight casts, half the base's memory |
| fused AdamW | kept where every parameter is a float on CPU/GPU | `AdamW step seconds` row: matters for full \
fine-tuning, noise for LoRA; the Trainer's default (`adamw_torch_fused` with torch ≥ 2.8) is fused too |
| one loss read per step, real tokens counted from row lengths | kept | no device sync per micro-batch; matters \
on a GPU |
| torch.set_num_threads | unchanged | torch already uses one thread per core; FIELD-NOTES: 1 thread nearly halves \
speed |
| torch.compile (each decoder layer, `dynamic=True`) | dropped | first step 56 s, then about 20 s of recompiling \
for every new packed length, and no faster afterwards (1.62 vs 1.70 s and 4.37 vs 4.13 s per step on the same \
batches) |
| eager attention in bf16 instead of the CPU flash kernel | dropped | 2.3x faster attention at 500 tokens, but \
scores rounded to bf16: 1.1% relative error against fp64 where sdpa has 0.16% |
| sdpa's math kernel instead of the CPU flash kernel in fp32 (short rows) | dropped (2026-12-07) | forward + \
backward of (4, 9 heads, n, 64) causal GQA attention: flash 1.4 ms vs math 3.3 ms at n = 32, 2.8 vs 30.7 ms at \
n = 49, 62 vs 103 ms at 128; both 3e-7 from fp64 |
| glibc with a fixed mmap threshold (`MALLOC_MMAP_THRESHOLD_=1048576`) | dropped | peak RSS 29% lower, steps \
about 25% slower (page faults on every large allocation) |
| gradient checkpointing | only on request | recomputes the forward: slower, for memory only |

Where the time went (torch profiler, one 1,098-token packed bf16 step of the bundled model on a CPU with native
bf16): matmuls 41% (at about 85% of the measured peak), the CPU flash-attention kernel 30% (forward and backward
at about 40 GFLOP/s), LoRA dropout masks (`bernoulli_`) 10%, elementwise work the rest. The MFU target of 50%
would need attention at matmul speed, which the CPU kernels do not reach without losing precision.
`bench/train_profile.py` prints the same breakdown for one step of the studio's loop in any precision.
"""

def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    if DEVICE == "cuda":
        cpu = f"{torch.cuda.get_device_name()} (GPU) with {cpu}"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}


def emit(record: dict, lines: list[dict]) -> None:
    lines.append(record)
    print(json.dumps(record), flush=True)


def summarise(name: str, runs: dict[str, list[dict]], stats: dict, shape: dict, peak: float,
              lines: list[dict]) -> None:
    flops = flops_per_token(shape, stats["sum_sq_over_sum"], stats["labelled_fraction"])
    speed = {arm: [r["tokens_per_s"] for r in rs] for arm, rs in runs.items()}
    for arm in [a for a in ("studio", "padded", "before") if a in runs and "ref" in runs]:
        ratios = [s / r for s, r in zip(speed[arm], speed["ref"])]  # within a round: same machine load
        ref_loss = statistics.mean(tail_loss(r["losses"]) for r in runs["ref"])
        arm_loss = statistics.mean(tail_loss(r["losses"]) for r in runs[arm])
        emit({"figure": "real_tokens_per_s", "dataset": name, "arm": arm,
              "ref": round(statistics.mean(speed["ref"]), 1),
              arm: round(statistics.mean(speed[arm]), 1), "ratio": round(statistics.median(ratios), 3),
              "round_ratios": [round(x, 3) for x in ratios]}, lines)
        emit({"figure": "peak_gpu_mib" if DEVICE == "cuda" else "peak_rss_mib", "dataset": name, "arm": arm,
              "ref": round(max(r["peak_rss_mib"] for r in runs["ref"])),
              arm: round(max(r["peak_rss_mib"] for r in runs[arm]))}, lines)
        emit({"figure": "final_loss", "dataset": name, "arm": arm, "ref": round(ref_loss, 4), arm: round(arm_loss, 4),
              "similar": abs(arm_loss - ref_loss) <= LOSS_TOLERANCE * ref_loss}, lines)
    if "grouped" in runs and "padded" in runs:
        ratios = [g / p for g, p in zip(speed["grouped"], speed["padded"])]
        emit({"figure": "grouped_vs_padded", "dataset": name, "grouped": round(statistics.mean(speed["grouped"]), 1),
              "padded": round(statistics.mean(speed["padded"]), 1), "ratio": round(statistics.median(ratios), 3),
              "round_ratios": [round(x, 3) for x in ratios]}, lines)
    if "studio" in runs and "before" in runs:
        ratios = [s / b for s, b in zip(speed["studio"], speed["before"])]
        emit({"figure": "studio_vs_before", "dataset": name, "studio": round(statistics.mean(speed["studio"]), 1),
              "before": round(statistics.mean(speed["before"]), 1), "ratio": round(statistics.median(ratios), 3),
              "round_ratios": [round(x, 3) for x in ratios]}, lines)
    if "studio" in runs and "padded" in runs:
        ratios = [s / p for s, p in zip(speed["studio"], speed["padded"])]
        emit({"figure": "packed_vs_padded", "dataset": name, "studio": round(statistics.mean(speed["studio"]), 1),
              "padded": round(statistics.mean(speed["padded"]), 1), "ratio": round(statistics.median(ratios), 3),
              "round_ratios": [round(x, 3) for x in ratios],
              "studio_layout": "/".join(sorted({r["layout"] for r in runs["studio"]}))}, lines)
    emit({"figure": "mfu", "dataset": name, "flops_per_token": round(flops), "peak_gflops": round(peak / 1e9, 1),
          **{arm: round(statistics.mean(v) * flops / peak, 4) for arm, v in speed.items()}}, lines)


def markdown(lines: list[dict], info: dict, args) -> str:
    out = ["# Training speed" + ("" if METHOD == "lora" else ": full fine-tuning"), "",
           f"Generated by `{' '.join(['.venv/bin/python', 'bench/train_speed.py'] + sys.argv[1:])}` "
           f"on {info['date']}: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
           f"Python {info['python']}; {args.threads} threads, {precision_words(args.precision)}, "
           f"{'LoRA r=16 on q,k,v,o' if METHOD == 'lora' else 'full fine-tuning (every weight)'}, batch size "
           f"{args.batch_size}, {args.steps} steps, {args.rounds} alternating rounds per arm. Model: {args.model}.",
           "", "Ratios are medians of per-round ratios (runs of one round ran back to back), so they hold on a "
           "busy machine better than the absolute figures do.", "",
           "| dataset | figure | ref (Trainer) | studio | padded studio | ratio | note |",
           "|---|---|---|---|---|---|---|"]
    for r in lines:
        if r["figure"] in ("real_tokens_per_s", "peak_rss_mib", "peak_gpu_mib", "final_loss") and r["arm"] == "before":
            out.append(f"| {r['dataset']} | {r['figure']} (studio before the lever) | {r['ref']} | {r['before']} | | "
                       f"{r.get('ratio', '')} | |")
        elif r["figure"] in ("real_tokens_per_s", "peak_rss_mib", "peak_gpu_mib", "final_loss"):
            note = {"final_loss": "similar" if r.get("similar") else "NOT similar: speed does not count"}.get(
                r["figure"], "")
            out.append(f"| {r['dataset']} | {r['figure']} | {r['ref']} | {r.get('studio', '')} | {r.get('padded', '')} "
                       f"| {r.get('ratio', '')} | {note} |")
        elif r["figure"] == "packed_vs_padded":
            out.append(f"| {r['dataset']} | studio ({r.get('studio_layout', 'packed')}) vs padded tokens/s | "
                       f"| {r['studio']} | {r['padded']} | {r['ratio']} | rounds {r['round_ratios']} |")
        elif r["figure"] == "studio_vs_before":
            out.append(f"| {r['dataset']} | studio vs studio before the lever tokens/s | | {r['studio']} | "
                       f"{r['before']} (before) | {r['ratio']} | rounds {r['round_ratios']} |")
        elif r["figure"] == "grouped_vs_padded":
            out.append(f"| {r['dataset']} | length-grouped vs plain padded tokens/s | | {r['grouped']} (grouped) | "
                       f"{r['padded']} | {r['ratio']} | rounds {r['round_ratios']} |")
        elif r["figure"] == "adamw_full_step_s":
            out.append(f"| (full parameter set) | AdamW step seconds, foreach vs fused | {r['foreach']} (foreach) | "
                       f"{r['fused']} (fused) | | {r['ratio']} | |")
        elif r["figure"] == "lora_dropout_s":
            out.append(f"| ({r['tokens']} tokens × {r['hidden']}) | LoRA input dropout ms (forward + backward), "
                       f"dense vs sparse | {r['dense_ms']} (nn.Dropout) | {r['sparse_ms']} (SparseDropout) | | "
                       f"{r['ratio']} | one adapted module's input |")
        elif r["figure"] == "peak_matmul_gflops":
            out.append(f"| | peak {r['dtype']} matmul GFLOP/s | | {r['best']} | | | each measurement {r['all']} |")
        elif r["figure"] == "mfu":
            out.append(f"| {r['dataset']} | MFU | {r.get('ref', '')} | {r.get('studio', '')} | {r.get('padded', '')} "
                       f"| | {r['flops_per_token'] / 1e6:.0f} MFLOP/token, peak {r['peak_gflops']} GFLOP/s |")
    return "\n".join(out + ["", LEVERS if METHOD == "lora" else ""]) + "\n"


def precision_words(requested: str) -> str:
    how = "fp32 (no autocast)" if PRECISION == "fp32" else f"{PRECISION} autocast"
    return f"{how}, both arms" + (" (`--precision auto`: what the studio's `precision: auto` picks here)"
                                  if requested == "auto" else "")


def model_dir_for(name: str) -> Path:
    """--model: the bundled SmolLM2-135M (converted once), the tests' tiny model, or a directory."""
    if name == "bundled":
        from tuning.models import prepare_bundled_model

        return prepare_bundled_model(REPO / ".cache" / "bench" / "smollm2-135m-instruct")
    if name == "tiny":
        from tests.tiny_model import tiny_model_dir

        return tiny_model_dir()
    return Path(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="bundled", help="bundled, tiny, or a model directory")
    parser.add_argument("--datasets", default="sample,mixed")
    parser.add_argument("--arms", default="ref,studio,padded")
    parser.add_argument("--method", choices=["lora", "full"], default="lora",
                        help="LoRA in both arms, or full fine-tuning (the Trainer without peft, the studio's full)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                        help="both arms: auto is what the studio's precision=auto picks on this device (fp32 on a "
                             "CPU without native bf16, where emulated bf16 runs some 30x slower)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where every arm runs (default: cuda if present)")
    parser.add_argument("--out", help="write the markdown table here (e.g. BENCHMARKS.md)")
    parser.add_argument("--peak-size", type=int, default=2048,
                        help="matrix size of the matmul that measures the peak for MFU (small for a smoke run; "
                             "in bf16 on a CPU without native bf16 it takes minutes at 2048)")
    parser.add_argument("--before", help="a checkout of the studio without the lever being measured: arm 'before'")
    parser.add_argument("--child-ref", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_ref:
        child_ref(args.child_ref)
        return
    global DEVICE, METHOD, PRECISION
    import torch

    METHOD = args.method
    DEVICE = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    PRECISION = resolve_precision(args.precision)

    model_dir = model_dir_for(args.model)
    workdir = Path(tempfile.mkdtemp(prefix="train-speed-"))
    datasets = {"sample": SAMPLE, "mixed": mixed_dataset(workdir / "mixed.jsonl")}
    arms = args.arms.split(",")
    shape = model_shape(model_dir)
    info = machine()
    lines: list[dict] = []
    peaks = [peak_matmul_flops(args.threads, args.peak_size)]
    mean_tokens: list[float] = []
    for name in args.datasets.split(","):
        path = datasets[name]
        stats = dataset_stats(path, model_dir, args.max_length)
        mean_tokens.append(stats["mean_tokens"])
        emit({"figure": "dataset", "dataset": name, **{k: round(v, 3) for k, v in stats.items()}}, lines)
        spec = {"model": str(model_dir), "data": str(path), "steps": args.steps, "batch_size": args.batch_size,
                "max_length": args.max_length, "lr": args.lr, "seed": args.seed, "threads": args.threads,
                "workdir": str(workdir), "device": DEVICE, "method": METHOD, "precision": PRECISION}
        runs: dict[str, list[dict]] = {arm: [] for arm in arms}
        for round_ in range(args.rounds):
            for arm in arms:
                where = workdir / f"{name}-{arm}-{round_}"
                result = (script_arm(spec, where) if arm == "ref" else
                          studio_arm(spec, True, where, repo=Path(args.before)) if arm == "before" else
                          studio_arm(spec, arm == "studio", where, group_by_length=arm == "grouped"))
                runs[arm].append(result)
                print(json.dumps({"run": arm, "dataset": name, "round": round_ + 1,
                                  "tokens_per_s": round(result["tokens_per_s"], 1),
                                  "peak_rss_mib": round(result["peak_rss_mib"]), "wall_s": round(result["wall_s"], 1),
                                  "losses": [round(x, 3) for x in result["losses"]]}), file=sys.stderr, flush=True)
            # between rounds: the machine's best moment counts
            peaks.append(peak_matmul_flops(args.threads, args.peak_size))
        summarise(name, runs, stats, shape, max(peaks), lines)
    adamw = adamw_step_seconds(model_dir, args.threads)
    emit({"figure": "adamw_full_step_s", "foreach": round(adamw["foreach"], 3), "fused": round(adamw["fused"], 3),
          "ratio": round(adamw["foreach"] / adamw["fused"], 2)}, lines)
    if METHOD == "lora" and LORA["dropout"]:
        tokens = round(args.batch_size * statistics.mean(mean_tokens))
        dropout = dropout_seconds(shape["hidden"], tokens, args.threads)
        emit({"figure": "lora_dropout_s", "tokens": tokens, "hidden": shape["hidden"],
              "dense_ms": round(dropout["dense"] * 1e3, 3), "sparse_ms": round(dropout["sparse"] * 1e3, 3),
              "ratio": round(dropout["dense"] / dropout["sparse"], 2)}, lines)
    emit({"figure": "peak_matmul_gflops", "dtype": PRECISION, "threads": args.threads,
          "best": round(max(peaks) / 1e9, 1), "all": [round(p / 1e9, 1) for p in peaks], **info}, lines)
    if args.out:  # its own section of the file: BENCHMARKS.md's other sections stay
        write_section(Path(args.out), "train_speed" if METHOD == "lora" else "train_speed_full",
                      markdown(lines, info, args))


if __name__ == "__main__":
    main()
