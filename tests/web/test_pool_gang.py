"""One job on two workers: two worker processes of one pool, each reporting
one device (WORKER_DEVICES=1, CPU, gloo), run a 2-device LoRA job through
a real torchrun rendezvous (c10d, on the loopback address). The worker that
claims it heads it, the other joins as its follower; the per-step losses
are those of one process on the same global batches, each step is reported
once, and the job ends once.

The workers share the test's database, so this runs on the suite's Postgres
pass (``python -m tests.postgres pytest ...``) and is skipped on SQLite,
whose test database lives in this process's memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from django.db import connection

from studio.datasets.services import dataset_create_from_file
from studio.jobs.services import job_create_train
from studio.workers.models import WorkerNode
from tests.postgres import database_url_for, is_postgres
from tuning.config import TrainConfig
from tuning.events import MemorySink
from tuning.train import run_train

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not is_postgres(os.environ.get("DATABASE_URL")),
                                 reason="needs a database shared by several processes: the suite's Postgres pass")]


def _start_workers(pool: str, go_file: Path, media_root: str) -> list[subprocess.Popen]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "studio.test_settings", "OMP_NUM_THREADS": "1",
           "DATABASE_URL": database_url_for(os.environ["DATABASE_URL"], connection.settings_dict["NAME"]),
           "WORKER_DEVICES": "1", "WORKER_ADDRESS": "127.0.0.1", "MEDIA_ROOT": media_root,
           "RENDEZVOUS_TIMEOUT_S": "120", "PYTHONPATH": str(REPO)}
    return [subprocess.Popen([sys.executable, "-m", "tests.web.pool_worker", pool, f"machine-{n}@box",
                              str(go_file)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for n in (1, 2)]


@pytest.mark.timeout(600)
def test_two_workers_of_one_device_run_a_two_device_job_through_one_rendezvous(transactional_db, member, team,
                                                                              tiny_base_model, tmp_path, settings):
    rows = [{"instruction": f"Say {word}.", "output": f"{word.title()}!"} for word in
            ("hello", "goodbye", "yes", "no", "maybe", "thanks", "sorry", "please")]
    data = tmp_path / "words.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = dataset_create_from_file(team=team, user=member, source_path=data, filename="words.jsonl")
    job = job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                           settings_values={"devices": 2, "batch_size": 4, "max_steps": STEPS, "save_every": 1000,
                                            "learning_rate": 0.01, "warmup_ratio": 0.0, "precision": "fp32"},
                           method_params={"rank": 4, "dropout": 0.0})

    go = tmp_path / "go"
    workers = _start_workers(job.device_pool, go, str(settings.MEDIA_ROOT))
    try:
        deadline = time.monotonic() + 120
        while WorkerNode.objects.filter(device_count=1, address="127.0.0.1").count() < 2:
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers), "workers did not register"
            time.sleep(0.2)
        go.touch()
        outputs = [worker.communicate(timeout=540)[0].decode(errors="replace") for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert all(worker.returncode == 0 for worker in workers), "\n".join(outputs)

    job.refresh_from_db()
    holds = sorted((hold.role, hold.devices, hold.worker_name) for hold in job.holds.filter(attempt=1))
    assert [(role, devices) for role, devices, _ in holds] == [("follower", 1), ("head", 1)]
    assert {name for _, _, name in holds} == {"machine-1@box", "machine-2@box"}, "one worker on each side"
    head, = job.holds.filter(role="head")
    assert head.workers == 2 and head.rendezvous.startswith("127.0.0.1:") and job.worker_name == head.worker_name

    statuses = [e.data["status"] for e in job.events.filter(kind="status").order_by("seq")]
    assert statuses == ["queued", "running", "succeeded"] and job.attempts == 1, "the job ended once"
    metrics = list(job.events.filter(kind="metrics").order_by("seq").values_list("data", flat=True))
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1)), "each step once"
    assert job.artifacts.count() == 1

    sink = MemorySink()  # the same global batches in one process
    run_train(replace(TrainConfig.from_dict(job.config), devices=1, output_dir=str(tmp_path / "one")), sink)
    torch.testing.assert_close(torch.tensor([m["loss"] for m in metrics]),
                               torch.tensor([event.loss for event in sink.of_kind("metrics")]), rtol=2e-4, atol=2e-5)
