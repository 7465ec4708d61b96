"""One job on two workers: two worker processes of one pool, each reporting
one device (WORKER_DEVICES=1, CPU, gloo), run a 2-device LoRA job through
a real torchrun rendezvous (c10d, on the loopback address). The worker that
claims it heads it, the other joins as its follower; the per-step losses
are those of one process on the same global batches, each step is reported
once, and the job ends once. A follower killed mid-run (kill -9) stops the
group at once and the job goes back to the queue, resuming from its last
checkpoint when the worker is back; a cancel stops both workers' ranks at
one step, and both are free again.

The workers share the test's database, so this runs on the suite's Postgres
pass (``python -m tests.postgres pytest ...``) and is skipped on SQLite,
whose test database lives in this process's memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from django.db import connection
from django.utils import timezone

from studio.datasets.services import dataset_create_from_file
from studio.jobs.backfill import holding_worker_names
from studio.jobs.models import Job, JobHold
from studio.jobs.services import job_cancel, job_create_train
from studio.workers.models import WorkerNode
from tests.postgres import database_url_for, is_postgres
from tuning.config import TrainConfig
from tuning.events import MemorySink
from tuning.train import run_train

REPO = Path(__file__).resolve().parents[2]
STEPS = 4
WORKERS = ("machine-1@box", "machine-2@box")
RENDEZVOUS_TIMEOUT_S = 120
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not is_postgres(os.environ.get("DATABASE_URL")),
                                 reason="needs a database shared by several processes: the suite's Postgres pass")]


def _start_worker(name: str, pool: str, go_file: Path, media_root: str) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "studio.test_settings", "OMP_NUM_THREADS": "1",
           "DATABASE_URL": database_url_for(os.environ["DATABASE_URL"], connection.settings_dict["NAME"]),
           "WORKER_DEVICES": "1", "WORKER_ADDRESS": "127.0.0.1", "MEDIA_ROOT": media_root,
           "RENDEZVOUS_TIMEOUT_S": str(RENDEZVOUS_TIMEOUT_S), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "tests.web.pool_worker", pool, name, str(go_file)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _start_workers(pool: str, go_file: Path, media_root: str) -> dict[str, subprocess.Popen]:
    """Two workers, registered (each sees the other idle) before either claims."""
    workers = {name: _start_worker(name, pool, go_file, media_root) for name in WORKERS}
    deadline = time.monotonic() + 120
    while WorkerNode.objects.filter(device_count=1, address="127.0.0.1").count() < 2:
        assert time.monotonic() < deadline and all(w.poll() is None for w in workers.values()), \
            "workers did not register"
        time.sleep(0.2)
    go_file.touch()
    return workers


def _outputs(workers: dict[str, subprocess.Popen]) -> dict[str, str]:
    """What each worker printed, once it left (the pool having nothing queued or running)."""
    try:
        outputs = {name: worker.communicate(timeout=540)[0].decode(errors="replace")
                   for name, worker in workers.items()}
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.kill()
    assert all(worker.returncode == 0 for worker in workers.values()), "\n".join(outputs.values())
    return outputs


def _job(member, team, tiny_base_model, tmp_path, **settings) -> Job:
    rows = [{"instruction": f"Say {word}.", "output": f"{word.title()}!"} for word in
            ("hello", "goodbye", "yes", "no", "maybe", "thanks", "sorry", "please")]
    data = tmp_path / "words.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = dataset_create_from_file(team=team, user=member, source_path=data, filename="words.jsonl")
    return job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                            settings_values={"devices": 2, "batch_size": 4, "max_steps": STEPS, "save_every": 1000,
                                             "learning_rate": 0.01, "warmup_ratio": 0.0, "precision": "fp32",
                                             **settings},
                            method_params={"rank": 4, "dropout": 0.0})


def _wait_for(condition, what: str, workers: dict[str, subprocess.Popen], timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline and all(w.poll() is None for w in workers.values()), what
        time.sleep(0.05)
    return found


def _statuses(job: Job) -> list[str]:
    return [e.data["status"] for e in job.events.filter(kind="status").order_by("seq")]


def _shown_steps(job: Job) -> list[int]:
    return [m["step"] for m in job.events.filter(kind="metrics", superseded=False).order_by("seq")
            .values_list("data", flat=True)]


@pytest.mark.timeout(600)
def test_two_workers_of_one_device_run_a_two_device_job_through_one_rendezvous(transactional_db, member, team,
                                                                              tiny_base_model, tmp_path, settings):
    job = _job(member, team, tiny_base_model, tmp_path)
    _outputs(_start_workers(job.device_pool, tmp_path / "go", str(settings.MEDIA_ROOT)))

    job.refresh_from_db()
    holds = sorted((hold.role, hold.devices, hold.worker_name) for hold in job.holds.filter(attempt=1))
    assert [(role, devices) for role, devices, _ in holds] == [("follower", 1), ("head", 1)]
    assert {name for _, _, name in holds} == {"machine-1@box", "machine-2@box"}, "one worker on each side"
    head, = job.holds.filter(role="head")
    assert head.workers == 2 and head.rendezvous.startswith("127.0.0.1:") and job.worker_name == head.worker_name

    assert _statuses(job) == ["queued", "running", "succeeded"] and job.attempts == 1, "the job ended once"
    metrics = list(job.events.filter(kind="metrics").order_by("seq").values_list("data", flat=True))
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1)), "each step once"
    assert job.artifacts.count() == 1

    sink = MemorySink()  # the same global batches in one process
    run_train(replace(TrainConfig.from_dict(job.config), devices=1, output_dir=str(tmp_path / "one")), sink)
    torch.testing.assert_close(torch.tensor([m["loss"] for m in metrics]),
                               torch.tensor([event.loss for event in sink.of_kind("metrics")]), rtol=2e-4, atol=2e-5)


LONG = 40  # steps of the run whose follower is killed: the kill lands well before its end
NEVER_ENDS = 500  # steps of the run that is cancelled


def _attempt_processes(hold: JobHold) -> list[int]:
    """Processes still running a follower's share of an attempt: its torchrun and ranks, found by the config
    file only that follower's command names."""
    import psutil

    mine = f"config-{hold.pk}.json"
    return [process.pid for process in psutil.process_iter(["cmdline"])
            if any(mine in part for part in process.info["cmdline"] or ())]


@pytest.mark.timeout(600)
def test_a_follower_killed_mid_run_stops_the_group_and_the_job_resumes_from_its_checkpoint(
        transactional_db, member, team, tiny_base_model, tmp_path, settings):
    job = _job(member, team, tiny_base_model, tmp_path, max_steps=LONG, save_every=1)
    workers = _start_workers(job.device_pool, tmp_path / "go", str(settings.MEDIA_ROOT))
    follower = _wait_for(lambda: job.events.filter(kind="checkpoint").count() >= 2
                         and JobHold.objects.filter(job=job, role=JobHold.Role.FOLLOWER).first(),
                         "the run ended before two checkpoints", workers)
    killed, killed_at = workers.pop(follower.worker_name), timezone.now()
    killed.send_signal(signal.SIGKILL)  # its torchrun and ranks die with it (PR_SET_PDEATHSIG)
    killed.communicate()

    started = job.events.filter(kind="status", data__status="running").get().seq
    requeued = _wait_for(lambda: job.events.filter(kind="status", data__status="queued", seq__gt=started).first(),
                         "the job did not go back to the queue", workers, timeout_s=RENDEZVOUS_TIMEOUT_S)
    # Its group's failure, not a rendezvous or heartbeat timeout (both are longer), sent it back.
    assert (requeued.created_at - killed_at).total_seconds() < RENDEZVOUS_TIMEOUT_S
    assert "stopped (torchrun exit" in requeued.data["message"], requeued.data["message"]
    resumed_from = int(requeued.data["message"].split("resuming from step-")[1].split()[0])
    assert resumed_from >= 2
    _wait_for(lambda: not _attempt_processes(follower), "the killed worker's ranks trained on", workers, 30)

    # The launcher restarts a killed worker under its name; the job's next claim takes both again.
    workers[follower.worker_name] = _start_worker(follower.worker_name, job.device_pool, tmp_path / "go",
                                                  str(settings.MEDIA_ROOT))
    printed = "".join(_outputs(workers).values())
    assert printed.count(": succeeded") == 1 and printed.count(": queued") == 1, printed

    job.refresh_from_db()
    assert _statuses(job) == ["queued", "running", "queued", "running", "succeeded"] and job.attempts == 2
    assert sorted(job.holds.filter(attempt=2).values_list("role", flat=True)) == ["follower", "head"]
    assert _shown_steps(job) == list(range(1, LONG + 1)), "each step once in the chart"
    redone = job.events.filter(kind="metrics", seq__gt=requeued.seq).order_by("seq").first()
    assert redone.data["step"] == resumed_from + 1, "the next claim went on from the checkpoint"
    shown_checkpoints = [c["step"] for c in job.events.filter(kind="checkpoint", superseded=False)
                         .order_by("seq").values_list("data", flat=True)]
    assert shown_checkpoints == sorted(set(shown_checkpoints)) and resumed_from in shown_checkpoints
    assert job.events.filter(kind="artifact", superseded=False).count() == 1 and job.artifacts.count() == 1


@pytest.mark.timeout(600)
def test_a_cancel_stops_both_workers_ranks_at_one_step_and_frees_both(transactional_db, member, team,
                                                                       tiny_base_model, tmp_path, settings):
    job = _job(member, team, tiny_base_model, tmp_path, max_steps=NEVER_ENDS)
    workers = _start_workers(job.device_pool, tmp_path / "go", str(settings.MEDIA_ROOT))
    _wait_for(lambda: job.events.filter(kind="metrics").exists(), "the run did not start", workers)
    job_cancel(job=job)
    ranks_dir = Path(job.config["output_dir"]) / "ranks"
    _wait_for(lambda: (ranks_dir / "stop").exists(), "the head did not pass the cancel on", workers, 60)
    asked_at = max(json.loads(line)["data"]["step"] for line in (ranks_dir / "events.jsonl").read_text().splitlines()
                   if '"kind": "metrics"' in line)
    # Both workers' loops end: their ranks stopped (the follower's torchrun exited 0: its ranks ended with the
    # run, not waiting at a collective) and the pool has nothing left for them.
    printed = "".join(_outputs(workers).values())
    assert printed.count(": cancelled") == 1 and printed.count(": followed") == 1, printed

    job.refresh_from_db()
    assert _statuses(job) == ["queued", "running", "cancelling", "cancelled"] and job.attempts == 1
    steps = _shown_steps(job)
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] <= asked_at + 1, "stopped within a step"
    assert [c["step"] for c in job.events.filter(kind="checkpoint").values_list("data", flat=True)] == [steps[-1]]
    assert not job.artifacts.exists()
    assert not holding_worker_names(job.device_pool), "no device of the pool is held: the next claim may use both"
