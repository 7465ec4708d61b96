"""A training job that asks for 2 devices runs through the one job system:
the worker (``worker.runner.run_job``, in this process) launches 2 CPU
ranks with torchrun and records what rank 0 reports. A rank killed mid-run
stops the group, torchrun restarts it from the last checkpoint, and the job
still ends once with each step once in its events; a cancel stops every
rank within a step and keeps a checkpoint."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from studio.datasets.services import dataset_create_from_file
from studio.jobs.models import Job
from studio.jobs.services import job_create_train
from tests.core.test_distributed import _rank_pids
from worker.distributed_runs import train_on_ranks
from worker.runner import run_job
from worker.sink import JobSink
from tuning.config import TrainConfig

pytestmark = pytest.mark.slow
STEPS = 30


@pytest.fixture
def dataset(member, team, tmp_path):
    rows = [{"instruction": f"Say {word}.", "output": f"{word.title()}!"} for word in
            ("hello", "goodbye", "yes", "no", "maybe", "thanks", "sorry", "please")]
    data = tmp_path / "words.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="words.jsonl")


def _two_device_job(member, team, dataset, tiny_base_model, **settings) -> Job:
    return job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                            settings_values={"devices": 2, "batch_size": 4, "max_steps": STEPS, "save_every": 4,
                                             "learning_rate": 0.01, "precision": "fp32", **settings},
                            method_params={"rank": 4, "dropout": 0.0})


def _kill_rank_one_after_a_checkpoint(job: Job, killed: list) -> None:
    """Watches the events rank 0 appends; after the first checkpoint, SIGKILLs rank 1 (filesystem only: this
    thread never touches the database)."""
    events = Path(job.config["output_dir"]) / "ranks" / "events.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if events.exists() and '"kind": "checkpoint"' in events.read_text():
            for parent in _torchrun_pids():
                ranks = _rank_pids(parent)
                if 1 in ranks:
                    os.kill(ranks[1], signal.SIGKILL)
                    killed.append(ranks[1])
                    return
        time.sleep(0.05)


def _torchrun_pids() -> list[int]:
    import psutil

    return [child.pid for child in psutil.Process().children() if "torch.distributed.run" in " ".join(child.cmdline())]


def test_a_two_device_job_survives_a_killed_rank_and_ends_once(member, team, dataset, tiny_base_model):
    job = _two_device_job(member, team, dataset, tiny_base_model)
    killed = []
    killer = threading.Thread(target=_kill_rank_one_after_a_checkpoint, args=(job, killed), daemon=True)
    killer.start()
    assert run_job(job.pk, worker_name="multi-device", pool=job.device_pool, devices=2) == "succeeded"
    killer.join(timeout=5)
    assert killed, "the run ended before rank 1 could be killed"

    job.refresh_from_db()
    statuses = [e.data["status"] for e in job.events.filter(kind="status").order_by("seq")]
    assert statuses == ["queued", "running", "succeeded"] and job.attempts == 1
    shown = list(job.events.filter(kind="metrics", superseded=False).order_by("seq").values_list("data", flat=True))
    assert [m["step"] for m in shown] == list(range(1, STEPS + 1)), "each step once in the chart"
    assert job.events.filter(kind="artifact", superseded=False).count() == 1 and job.artifacts.count() == 1
    restarted = [e.data["message"] for e in job.events.filter(kind="log") if "restarted" in e.data["message"]]
    assert len(restarted) == 1 and "resuming from step" in restarted[0]
    assert job.progress_step == STEPS


class StopAfter(JobSink):
    """The job's own sink, asking to stop once ``after`` steps were reported (a user's cancel, without the
    timing of a second thread)."""

    def __init__(self, job: Job, after: int):
        super().__init__(job)
        self.after = after

    def should_stop(self) -> bool:
        return self.job.events.filter(kind="metrics").count() >= self.after


def test_a_cancel_stops_every_rank_and_keeps_a_checkpoint(member, team, dataset, tiny_base_model):
    job = _two_device_job(member, team, dataset, tiny_base_model, max_steps=500, save_every=1000)
    result = train_on_ranks(job, StopAfter(job, 2), TrainConfig.from_dict(job.config))
    assert result.status == "cancelled" and result.steps >= 2
    checkpoints = list(job.events.filter(kind="checkpoint").values_list("data", flat=True))
    assert [c["step"] for c in checkpoints] == [result.steps]
    assert (Path(job.config["output_dir"]) / "checkpoints" / f"step-{result.steps:07d}").is_dir()
    assert not job.events.filter(kind="artifact").exists()
