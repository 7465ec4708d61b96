"""Each bench script of bench/run_all.py run at its quick size (tiny model,
one round, a few steps), so that the benchmarks never rot: a script that
breaks, or stops printing a figure a row of BENCHMARKS.md's summary reads,
fails its test. The figures themselves are not checked against the goals
(quick sizes measure nothing); their presence is.

The scripts set up their own databases (SQLite files, or an embedded
Postgres for the queue's claim and simulation benches) and are not given the
suite's DATABASE_URL, so their tests are database-free: the Postgres pass
leaves them to the SQLite pass (tests/database_use.py). The test modules
beside this one split the scripts into groups that pytest-xdist hands to
different workers."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
GROUPS = {
    "training": ("train_speed", "train_speed_full", "preference_speed", "dataset_analysis", "hub_download",
                 "merge_parity", "merge_scale"),
    "pages": ("queue_page", "queue_page_postgres", "new_job_page", "models_page", "claim_throughput",
              "queue_simulation"),
    "stack": ("openai_serving", "studio_overhead", "ws_latency", "ws_fanout", "upload_memory"),
}
TIMEOUT_S = 600


def run_all_module():
    spec = importlib.util.spec_from_file_location("bench_run_all", REPO / "bench" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def check_quick(name: str) -> None:
    run_all = run_all_module()
    bench = next(b for b in run_all.BENCHES if b.name == name)
    if reason := run_all.available(bench):
        pytest.skip(reason)
    done = subprocess.run([sys.executable, "bench/run_all.py", "--quick", "--only", name, "--timeout",
                           str(TIMEOUT_S)], cwd=REPO, env={k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
                          capture_output=True, text=True, timeout=TIMEOUT_S + 60)
    report = next((json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"bench"')), None)
    assert report is not None, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["exit_code"] == 0, done.stdout[-4000:]
    for row, quick_row in zip(bench.rows, report["rows"]):
        if row.in_quick:
            assert quick_row["value"] is not None, (row.what, done.stdout[-4000:])
    assert done.returncode == 0, done.stdout[-4000:]
