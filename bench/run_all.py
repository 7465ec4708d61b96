"""Every benchmark row of issue 23 (and issue 24's load figures) in one
command, written as one table into BENCHMARKS.md's summary section.

    .venv/bin/python bench/run_all.py                  # every script at its full size (hours on 2 cores)
    .venv/bin/python bench/run_all.py --only queue_page,ws_latency
    .venv/bin/python bench/run_all.py --quick          # smallest sizes: proves each script still runs
    .venv/bin/python bench/run_all.py --list           # the scripts and their commands

Each entry of ``BENCHES`` is one run of one script (bench/*.py) and the
rows of the table it feeds: the script prints JSON lines, a row reads its
figure from them, a ratio (studio against the tool a user would pick
instead, or a measured value against its goal) and a verdict. A full run
stores each bench's figures in bench/results.json with the date, machine
and commit, and rewrites the summary section between the markers in
BENCHMARKS.md from that file, so ``--only`` refreshes some rows and keeps
the others' last figures (each row names the run that made it). The
detailed sections below the markers are the scripts' own write-ups.

``--quick`` runs each script with its smallest sizes (tiny model, one
round, a few steps) and writes nothing unless ``--out`` names a file: its
figures prove that the script still runs and reports, not the speed.
The exit status is 1 when a bench that ran reported no figure for a row.

Rows that need what this machine lacks (a CUDA GPU, mergekit's own
environment) say "not measured" and the command that measures them
(bench/gpu_check.sh for the GPU rows, in one call under 10 minutes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import operator
import os
import platform
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.sections import markers, write_section  # noqa: E402  (after the path: run as a script)

RESULTS = REPO / "bench" / "results.json"
BENCHMARKS = REPO / "BENCHMARKS.md"
BEGIN, END = markers("run_all")
MERGEKIT_PYTHON = os.environ.get("MERGEKIT_PYTHON", "/tmp/mk/bin/python")


@dataclass(frozen=True)
class Figure:
    value: float | None  # the ratio or measured value the goal is about; None: the script did not report it
    shown: str = ""  # how the table writes it, with its unit and the arms' own figures


@dataclass(frozen=True)
class Row:
    what: str
    against: str
    goal: str  # as the issue states it
    compare: str  # ">=" or "<=": how value relates to target for the goal to be met
    target: float
    read: Callable[[list[dict]], Figure]
    in_quick: bool = True  # False: --quick runs the script at a size that does not measure this row

    def verdict(self, figure: Figure) -> str:
        if figure.value is None:
            return "no figure"
        met = {">=": operator.ge, "<=": operator.le}[self.compare](figure.value, self.target)
        return "met" if met else "missed"


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...] | None  # None: no size small enough for --quick (why in quick_note)
    rows: tuple[Row, ...]
    needs: str = ""  # "gpu", "mergekit": run only where present
    quick_note: str = ""
    env: dict = field(default_factory=dict)

    def command(self, quick: bool) -> list[str]:
        runner = ["bash"] if self.script.endswith(".sh") else [sys.executable]
        return [*runner, self.script, *(self.quick if quick else self.full)]

    def shown_command(self, quick: bool = False) -> str:
        runner = "bash" if self.script.endswith(".sh") else ".venv/bin/python"
        return " ".join([runner, self.script, *(self.quick if quick else self.full)])


def first(lines: list[dict], **match) -> dict | None:
    return next((line for line in lines if all(line.get(k) == v for k, v in match.items())), None)


def key_figure(key: str, *, fmt: str = "{:.3g}", **match) -> Callable[[list[dict]], Figure]:
    """Reads ``key`` from the first line carrying ``match``."""
    def read(lines: list[dict]) -> Figure:
        line = first(lines, **match)
        if line is None or line.get(key) is None:
            return Figure(None)
        return Figure(float(line[key]), fmt.format(line[key]))
    return read


def training_ratio(dataset: str, arm: str = "studio", reference: str = "ref") -> Callable[[list[dict]], Figure]:
    def read(lines: list[dict]) -> Figure:
        speed = first(lines, figure="real_tokens_per_s", dataset=dataset, arm=arm) if dataset else \
            first(lines, figure="real_tokens_per_s", arm=arm)
        memory = next((line for line in lines if str(line.get("figure", "")).startswith("peak_")
                       and line.get("arm") == arm and line.get("dataset", dataset) == dataset), None)
        if speed is None:
            return Figure(None)
        shown = f"{speed['ratio']:.2f}× ({speed[arm]} vs {speed[reference]} tokens/s"
        if memory:
            shown += f"; peak {memory[arm]} vs {memory[reference]} MiB"
        return Figure(speed["ratio"], shown + ")")
    return read


def milliseconds(key: str, **match) -> Callable[[list[dict]], Figure]:
    def read(lines: list[dict]) -> Figure:
        line = first(lines, **match)
        if line is None or line.get(key) is None:
            return Figure(None)
        return Figure(float(line[key]), f"{line[key]:.0f} ms")
    return read


def served_ratio(key: str, invert: bool) -> Callable[[list[dict]], Figure]:
    """served ÷ generate; TTFT is a time, so its speed ratio is the inverse."""
    def read(lines: list[dict]) -> Figure:
        line = first(lines, figure="served_over_generate")
        if line is None:
            return Figure(None)
        value = 1 / line[key] if invert else line[key]
        return Figure(round(value, 3), f"{value:.2f}×")
    return read


def dataset_ratio(lines: list[dict]) -> Figure:
    line = first(lines, figure="dataset_analysis_rows_per_s")
    if line is None:
        return Figure(None)
    return Figure(line["ratio"], f"{line['ratio']:.2f}× ({line['studio_rows_per_s']} vs {line['datasets_rows_per_s']} "
                                 f"rows/s; peak {line['studio_peak_mib']} vs {line['datasets_peak_mib']} MiB)")


def fairness(lines: list[dict]) -> Figure:
    line = first(lines, figure="queue_simulation", arm="fair_share")
    if line is None or not line.get("each_job_ended_once"):
        return Figure(None, "a job did not end exactly once" if line else "")
    ratio = line["mean_wait_minutes_by_user"]["ratio"]
    return Figure(ratio, f"{ratio:.2f} (utilisation {line['utilisation']}, {line['jobs']} jobs, each ended once)")


def claims(lines: list[dict]) -> Figure:
    line = first(lines, figure="claims_per_s")
    if line is None or not line.get("each_claimed_once"):
        return Figure(None, "a job was claimed twice" if line else "")
    return Figure(line["ratio_many_to_one"], f"{line['ratio_many_to_one']:.2f}× ({line['many_claims_per_s']} vs "
                                             f"{line['one_claims_per_s']} claims/s, each job once)")


def q8_seconds(lines: list[dict]) -> Figure:
    line = first(lines, scheme="gguf_q8_0")
    if line is None or "seconds" not in line:
        return Figure(None)
    return Figure(line["seconds"], f"{line['seconds']:.0f} s ({line['cpu_s']:.0f} CPU-s)")


def merge_scale(method: str) -> Callable[[list[dict]], Figure]:
    def read(lines: list[dict]) -> Figure:
        line = first(lines, figure="merge_scale", method=method)
        if line is None:
            return Figure(None)
        return Figure(line["ratio"], f"{line['ratio']:.2f}× ({line['studio_s']} vs {line['mergekit_s']} s; peak "
                                     f"{line['studio_peak_mib']} vs {line['mergekit_peak_mib']} MiB, "
                                     f"{line['studio_peak_over_largest_tensor']}× the largest tensor; "
                                     f"relative difference {line['relative_diff']:.1e})")
    return read


GPU = "not measured here: needs a CUDA GPU (bash bench/gpu_check.sh all OUT)"


def queue_page_bench(name: str, database: str = "") -> Bench:
    """bench/queue_page.py's rows, on SQLite (its default) or ``database``."""
    on, chosen = (f" on {database.title()}", ("--database", database)) if database else ("", ())
    return Bench(name, "bench/queue_page.py", ("--queued", "10000", "--finished", "10000", "--requests", "20", *chosen),
                 ("--queued", "200", "--finished", "200", "--requests", "3", *chosen), (
        Row(f"Queue page{on} (polled table), 10,000 queued jobs", "—", "p95 < 300 ms", "<=", 300,
            milliseconds("queue_table_p95_ms", figure="queue_page_ms")),
        Row(f"Queue page{on}, a poll after a claim and a move in every pool", "—", "p95 < 300 ms",
            "<=", 300, milliseconds("queue_table_changed_p95_ms", figure="queue_page_ms")),
        Row(f"Job list{on}, 10,000 queued and 10,000 ended jobs", "—", "p95 < 300 ms", "<=", 300,
            milliseconds("job_list_p95_ms", figure="queue_page_ms")),
    ))


BENCHES: tuple[Bench, ...] = (
    Bench("train_speed", "bench/train_speed.py", ("--steps", "10", "--rounds", "3", "--datasets", "sample,mixed"),
          ("--model", "tiny", "--steps", "2", "--rounds", "1", "--batch-size", "2", "--max-length", "128",
           "--peak-size", "128", "--datasets", "sample", "--arms", "ref,studio"), (
        Row("LoRA training, short rows (CPU, sample data)", "HF Trainer + peft, dynamic padding", "≥ 1.5× tokens/s",
            ">=", 1.5, training_ratio("sample")),
        Row("LoRA training, mixed lengths (CPU)", "HF Trainer + peft, dynamic padding",
            "≥ 2.5× tokens/s at lower peak memory", ">=", 2.5, training_ratio("mixed"), in_quick=False),
    )),
    # Both training rows run in the precision the studio's `precision: auto` picks (fp32 on a CPU without
    # native bf16, where emulated bf16 would take minutes a step), which also sets the MFU's matmul peak.
    Bench("train_speed_full", "bench/train_speed.py", ("--method", "full", "--steps", "10", "--rounds", "3",
                                                       "--datasets", "sample", "--arms", "ref,studio"),
          ("--method", "full", "--model", "tiny", "--steps", "2", "--rounds", "1", "--batch-size", "2",
           "--max-length", "128", "--peak-size", "128", "--datasets", "sample", "--arms", "ref,studio"), (
        Row("Full fine-tuning (CPU, sample data)", "HF Trainer, dynamic padding", "≥ 1.3× tokens/s", ">=", 1.3,
            training_ratio("sample")),
    )),
    Bench("preference_speed", "bench/preference_speed.py", ("--rounds", "3", "--steps", "6", "--batch-size", "2",
                                                              "--max-length", "256", "--arms", "trl,studio"),
          ("--model", "tiny", "--steps", "2", "--rounds", "1", "--batch-size", "2", "--max-length", "128",
           "--arms", "trl,studio"), (
        Row("DPO (LoRA, CPU)", "TRL DPOTrainer", "≥ 1.3× tokens/s at no more memory", ">=", 1.3,
            training_ratio("", reference="trl")),
    )),
    Bench("gpu_check", "bench/gpu_check.sh", ("bench", "/tmp/gpu-check"), None, (
        Row("LoRA training on a GPU, packed (mixed lengths, batch 32)", "Trainer + peft; Unsloth where it installs",
            "≥ 2× the Trainer at ≤ ½ its memory", ">=", 2.0, training_ratio("mixed")),
    ), needs="gpu", quick_note="needs a CUDA GPU"),
    Bench("merge_parity", "bench/merge_parity.py", (), ("--vocab", "512", "--hidden", "64"), (
        Row("Merging, correctness (every deterministic method and DELLA)", "mergekit 0.1.5, same models",
            "relative difference ≤ 1e-4 on every tensor", "<=", 1e-4,
            key_figure("value", fmt="{:.1e} worst", figure="merge_parity_worst_relative_diff")),
    ), needs="mergekit"),
    Bench("merge_memory", "bench/merge_memory.py", (), None, (
        Row("Merging: TIES peak memory, bundled model", "the model's own size",
            "≤ 2.0 × one model file", "<=", 2.0,
            key_figure("value", fmt="{:.2f}× the model file", figure="ties_merge_peak_memory_over_model_size")),
    ), quick_note="the bundled model only (two 540 MB copies)"),
    Bench("quantize_export_time", "bench/quantize_export_time.py", ("--only", "gguf_q8_0"), None, (
        Row("GGUF q8_0 export, bundled model, default report", "—", "< 60 s", "<=", 60, q8_seconds),
    ), quick_note="the bundled model only"),
    Bench("openai_serving", "bench/openai_serving.py", ("--runs", "5"),
          ("--model", "tiny", "--runs", "1", "--max-tokens", "8"), (
        Row("Generation, time to first token (OpenAI endpoint, streamed)", "transformers generate, same model",
            "≥ 1.0× (speed: generate's TTFT ÷ served)", ">=", 1.0, served_ratio("ttft_ratio", invert=True)),
        Row("Generation, tokens/s (OpenAI endpoint, streamed)", "transformers generate, same model",
            "≥ 1.0×", ">=", 1.0, served_ratio("tokens_per_s_ratio", invert=False)),
    )),
    Bench("dataset_analysis", "bench/dataset_analysis.py", ("--rows", "100000", "--rounds", "3"),
          ("--rows", "300", "--rounds", "1"), (
        Row("Dataset analysis (token counts), 100k rows", "datasets.map, fast tokenizer, batched",
            "≥ 1.0× rows/s, memory bounded", ">=", 1.0, dataset_ratio),
    )),
    Bench("harness_speed", "bench/harness_speed.py", ("--rows", "500", "--rounds", "2"), None, (
        Row("lm-evaluation-harness through the studio", "lm_eval run, same task", "≤ 1.1× wall time", "<=", 1.1,
            key_figure("ratio", fmt="{:.2f}×", figure="harness_studio_over_lm_eval_wall")),
    ), quick_note="each arm loads lm_eval and a model in a fresh process: minutes even for 10 rows"),
    Bench("studio_overhead", "bench/studio_overhead.py", ("--steps", "10", "--rounds", "3"),
          ("--model", "tiny", "--steps", "3", "--rounds", "1", "--warmup", "0"), (
        Row("Studio path (web, Celery, events)", "python -m tuning train, same config", "≤ 1.05× wall time",
            "<=", 1.05, key_figure("value", fmt="{:.2f}×", figure="studio_over_cli_wall_time")),
    )),
    Bench("hub_download", "bench/hub_download.py", ("--megabytes", "512", "--rounds", "3"),
          ("--megabytes", "4", "--rounds", "1"), (
        Row("Adding a model from a hub", "hf download (snapshot_download)", "≥ 0.9× MB/s", ">=", 0.9,
            key_figure("studio_over_hf", fmt="{:.2f}×", figure="hub_download_throughput_ratio")),
    )),
    Bench("ws_latency", "bench/ws_latency.py", ("--seconds", "10", "--clients", "1,20,100"),
          ("--seconds", "3", "--clients", "20"), (
        Row("Live events to 20 viewers", "—", "p95 ≤ 100 ms", "<=", 100, milliseconds("p95_ms", clients=20)),
    )),
    Bench("ws_fanout", "bench/ws_fanout.py",
          ("--jobs", "50", "--viewers", "1000", "--seconds", "20", "--web-processes", "1,2"),
          ("--jobs", "2", "--viewers", "10", "--seconds", "3", "--web-processes", "2"), (
        Row("Live events, 50 jobs to 1,000 viewers, one web process", "—", "p95 ≤ 100 ms", "<=", 100,
            milliseconds("p95_ms", figure="ws_fanout", web_processes=1), in_quick=False),
        Row("Live events, 50 jobs to 1,000 viewers, two web processes", "—", "p95 ≤ 100 ms", "<=", 100,
            milliseconds("p95_ms", figure="ws_fanout", web_processes=2)),
    )),
    queue_page_bench("queue_page"),
    # A team's deployment runs on Postgres, where a changed poll's queries cost more than on SQLite's file.
    queue_page_bench("queue_page_postgres", "postgres"),
    Bench("new_job_page", "bench/new_job_page.py", ("--requests", "10"),
          ("--datasets", "4", "--listed-rows", "100", "--requests", "2"), (
        Row("New-job page, 80 dataset versions", "—", "median < 300 ms", "<=", 300,
            milliseconds("median_ms", figure="new_job_page_ms")),
    )),
    Bench("models_page", "bench/models_page.py", ("--models", "50"), ("--models", "3", "--requests", "2"), (
        Row("Models page, 50 models", "—", "median < 300 ms", "<=", 300,
            milliseconds("models_page_ms", figure="models_page_ms")),
    )),
    Bench("claim_throughput", "bench/claim_throughput.py", ("--jobs", "1000", "--claimers", "100", "--rounds", "3"),
          ("--jobs", "40", "--claimers", "8", "--rounds", "1"), (
        Row("Claims, 100 workers at once (Postgres)", "one claimer", "≥ 1× one claimer's rate, each job once",
            ">=", 1.0, claims),
    )),
    Bench("queue_simulation", "bench/queue_simulation.py", ("--jobs", "10000", "--workers", "100"),
          ("--jobs", "60", "--workers", "10", "--ms-per-minute", "2"), (
        Row("Fair share, simulated cluster (Postgres)", "first come within a priority",
            "colleagues' mean wait ÷ heavy users' < 1", "<=", 0.99, fairness),
    )),
    Bench("multi_adapter_serving", "bench/multi_adapter_serving.py",
          ("--rounds", "3", "--adapters", "8", "--requests", "16", "--max-tokens", "16"), None, (
        Row("Serving 8 LoRA adapters of one base, interleaved", "loading each adapter with its base in turn",
            "≥ 1.0× requests/s, the same answers", ">=", 1.0,
            key_figure("ratio_median", fmt="{:.2f}×", figure="multi_adapter_serving")),
    ), quick_note="the bundled model, loaded 16 times a round by the reload arm"),
    Bench("merge_scale", "bench/merge_scale.py", ("--methods", "task_arithmetic,ties"),
          ("--layers", "1", "--vocab", "2048", "--methods", "task_arithmetic"), (
        Row("Merging at scale, two 1.1B fine-tunes, task arithmetic", "mergekit 0.1.5",
            "≤ 0.5× its wall time, tensors equal", "<=", 0.5, merge_scale("task_arithmetic")),
        Row("Merging at scale, two 1.1B fine-tunes, TIES", "mergekit 0.1.5",
            "≤ 0.5× its wall time, tensors equal", "<=", 0.5, merge_scale("ties"), in_quick=False),
    ), needs="mergekit"),
    Bench("distributed_scaling", "bench/distributed_scaling.py", ("--device", "cuda"), None, (
        Row("LoRA on N GPUs (DDP), tokens/s", "N × one GPU's tokens/s", "≥ 0.85× linear", ">=", 0.85,
            key_figure("efficiency_median", fmt="{:.2f}× linear", figure="distributed_scaling")),
    ), needs="gpu", quick_note="needs 2+ CUDA GPUs (bash bench/gpu_check.sh multi OUT)"),
    Bench("upload_memory", "bench/upload_memory.py", ("--gigabytes", "1.0"), ("--gigabytes", "0.005"), (
        Row("Upload of a 1 GB dataset: web process memory", "—", "≤ 300 MB", "<=", 300,
            key_figure("value", fmt="{:.0f} MB", figure="upload_peak_rss_mb")),
    )),
)
NOT_SCRIPTED = (  # rows of issue 23 without a script yet: listed, so the gap shows
    ("LoRA training vs LLaMA-Factory 0.9.5 (CPU)", "LLaMA-Factory", "≥ 1.5× tokens/s and ≤ its peak memory",
     "no script: LLaMA-Factory is not installed beside the pinned torch"),
    ("The README's test command on 2 cores", "—", "≤ 6 min",
     "not run by this command (about 20 min): time `.venv/bin/python -m pytest -q` itself"),
)


def available(bench: Bench) -> str:
    """'' when this machine can run ``bench``, else why not."""
    if bench.needs == "gpu":
        try:
            import torch

            if torch.cuda.is_available():
                return ""
        except ImportError:
            pass
        return GPU
    if bench.needs == "mergekit" and not Path(MERGEKIT_PYTHON).exists():
        return (f"not measured here: needs mergekit 0.1.5 in its own environment at {MERGEKIT_PYTHON} "
                f"(see bench/merge_parity.py)")
    return ""


def json_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return lines


def run_bench(bench: Bench, *, quick: bool, timeout_s: float | None = None) -> dict:
    """Run one bench script; its figures, per row, as stored in results.json."""
    started, cpu_before = time.monotonic(), _children_cpu_s()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **bench.env}
    try:
        done = subprocess.run(bench.command(quick), cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout_s)
        stdout, stderr, code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        stdout, stderr, code = exc.stdout or "", f"timed out after {timeout_s} s", -1
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
    lines = json_lines(stdout)
    rows = []
    failed = code != 0
    for row in bench.rows:
        figure = row.read(lines)
        verdict = row.verdict(figure)
        if quick and not row.in_quick:
            verdict = "not in the quick run"
        elif quick and figure.value is not None:
            verdict = "quick sizes: no verdict"
        failed = failed or verdict == "no figure"
        rows.append({"what": row.what, "value": figure.value, "shown": figure.shown, "verdict": verdict})
    return {"bench": bench.name, "command": bench.shown_command(quick), "quick": quick, "rows": rows,
            "seconds": round(time.monotonic() - started, 1), "cpu_s": round(_children_cpu_s() - cpu_before, 1),
            "exit_code": code,
            "error": (stderr or stdout)[-2000:] if failed else "", "date": datetime.date.today().isoformat(),
            "commit": commit(), "machine": machine()["summary"], "lines": lines}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the scripts' own processes and theirs, once ended
    return usage.ru_utime + usage.ru_stime


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    memory = next((int(line.split()[1]) / 2**20 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0.0)
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
    except ImportError:
        pass
    versions = {name: _version(name) for name in ("torch", "transformers", "peft", "trl", "datasets")}
    load = os.getloadavg()[0]
    summary = f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB, GPU {gpu}, load {load:.1f}"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory, 1), "gpu": gpu,
            "python": platform.python_version(), **versions, "commit": commit(), "summary": summary}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cell(text: str) -> str:
    return re.sub(r"\s+", " ", str(text)).replace("|", "\\|")


def table(results: dict, info: dict) -> str:
    """The summary section: header with machine and versions, one line per row of every bench."""
    out = [BEGIN, "# Summary: every benchmark row (bench/run_all.py)", "",
           f"Regenerated by `.venv/bin/python bench/run_all.py` (all rows) or `--only NAME,...` (some rows; the "
           f"others keep their last run, named in the last column). Last written {datetime.date.today()} on "
           f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, GPU {info['gpu']}; Python "
           f"{info['python']}, torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}, "
           f"trl {info['trl']}, datasets {info['datasets']}; studio commit {info['commit']}. Ratios are the "
           f"studio's figure ÷ the other tool's, medians of per-round ratios with the arms alternating; on a "
           f"shared 2-core machine read the ratios, not the absolute times. The sections after this one are each "
           f"script's own write-up.", "",
           "| row | against | goal | figure | verdict | command | run |", "|---|---|---|---|---|---|---|"]
    for bench in BENCHES:
        stored = results.get(bench.name)
        reason = available(bench)
        for row in bench.rows:
            # By the row's name: a row renamed or added since the stored run has no figure from it.
            got = next((r for r in stored["rows"] if r["what"] == row.what), None) if stored else None
            if got:
                figure, verdict = got["shown"] or "—", got["verdict"]
                run = f"{stored['date']}, {stored['commit']}, {stored['machine']}{', quick sizes' * stored['quick']}"
            else:
                verdict = reason or "not run by run_all yet (earlier figures, if any, in the sections below)"
                figure, run = "—", ""
            out.append(f"| {_cell(row.what)} | {_cell(row.against)} | {_cell(row.goal)} | {_cell(figure)} | "
                       f"{_cell(verdict)} | `{bench.shown_command()}` | {_cell(run)} |")
    for what, against, goal, why in NOT_SCRIPTED:
        out.append(f"| {what} | {against} | {goal} | — | {_cell(why)} | | |")
    return "\n".join(out + ["", END])


def write_summary(path: Path, section: str) -> None:
    write_section(path, "run_all", section.removeprefix(BEGIN).removesuffix(END))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smallest sizes; writes nothing unless --out")
    parser.add_argument("--only", default="", help="comma-separated bench names (--list shows them)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--out", help="the markdown file whose summary section is rewritten "
                                      "(default: BENCHMARKS.md for a full run)")
    parser.add_argument("--timeout", type=float, help="seconds each script may run")
    args = parser.parse_args(argv)
    names = {b.name for b in BENCHES}
    only = [n for n in args.only.split(",") if n]
    if unknown := sorted(set(only) - names):
        parser.error(f"--only: no bench named {', '.join(unknown)}; the benches are {', '.join(sorted(names))}")
    if args.list:
        for bench in BENCHES:
            quick = (bench.shown_command(quick=True) if bench.quick is not None
                     else f"(no quick size: {bench.quick_note})")
            print(f"{bench.name}\n  full:  {bench.shown_command()}\n  quick: {quick}")
        return 0
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() and not args.quick else {}
    missing = []
    for bench in BENCHES:
        if only and bench.name not in only:
            continue
        reason = available(bench)
        if reason or (args.quick and bench.quick is None):
            print(f"{bench.name}: skipped ({reason or 'no quick size: ' + bench.quick_note})", flush=True)
            continue
        print(f"{bench.name}: {bench.shown_command(args.quick)}", flush=True)
        result = run_bench(bench, quick=args.quick, timeout_s=args.timeout)
        for row in result["rows"]:
            print(f"  {row['what']}: {row['shown'] or '—'} ({row['verdict']})", flush=True)
        if result["error"]:
            missing.append(bench.name)
            print(f"  exit {result['exit_code']} after {result['seconds']} s:\n{result['error']}", flush=True)
        else:
            print(f"  {result['seconds']} s wall, {result['cpu_s']} CPU-s", flush=True)
        results[bench.name] = result
        print(json.dumps({key: result[key] for key in ("bench", "quick", "rows", "seconds", "cpu_s", "exit_code")}),
              flush=True)
    if not args.quick:
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    out = args.out or (None if args.quick else str(BENCHMARKS))
    if out:
        write_summary(Path(out), table(results, machine()))
    if missing:
        print(f"no figure from: {', '.join(missing)}", flush=True)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
