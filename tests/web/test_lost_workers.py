"""A worker killed at the worst moments (what tests/integration/test_chaos.py
does at random, here at the exact instant): while writing a checkpoint, and
after recording a job's output but before recording its end; and restarted
under the same name. The next attempt resumes from a whole checkpoint, each
output is kept once, and the restarted worker takes its job back at once."""

import json
import os
import socket
import subprocess
import time

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from studio.artifacts.models import Artifact
from studio.datasets.models import Dataset, DatasetOperation
from studio.jobs.kinds import JOB_KINDS, JobKind, register_job_kind
from studio.jobs.models import Job, job_output_dir
from studio.jobs.backfill import holding_worker_names
from studio.jobs.services import job_progress, job_requeue_lost_group, jobs_recover_lost
from studio.jobs.services_queue import job_claim_next, job_join_next
from studio.jobs.state import job_create
from studio.workers.models import WorkerNode
from studio.workers.services import worker_register
from tuning.checkpoints import latest, rotate
from tuning.events import ArtifactEvent, CheckpointEvent, EvalEvent
from worker.dataset_runs import run_operation
from worker.gang_runs import head_launch
from worker.runner import run_job, take_back_from_dead_namesake
from worker.sink import JobSink


def run_maker(job, sink) -> tuple[str, str]:
    """A job that writes an output directory and reports it and its scores, as merges, exports and
    evaluations do at their end."""
    out = job_output_dir(job.pk) / "model"
    out.mkdir(parents=True, exist_ok=True)
    (out / "weights.safetensors").write_bytes(b"weights")
    sink.emit(ArtifactEvent(artifact_kind="model", path=str(out), metadata={"format": "safetensors"}))
    sink.emit(EvalEvent(step=0, eval_loss=1.5))
    return "succeeded", "Made"


@pytest.fixture(params=[False, True], ids=["starts-again", "resumes"])
def maker_kind(request):
    register_job_kind(JobKind(name="maker", label="Maker", run=f"{__name__}.run_maker",
                              resumes_from_checkpoint=request.param))
    yield JOB_KINDS["maker"]
    del JOB_KINDS["maker"]


def claimed_then_lost(job: Job, settings) -> Job:
    """Claim the job as a worker does; the caller then does part of its work and the worker dies (its
    heartbeat stops long enough ago to count as lost)."""
    claimed = job_claim_next(pool=job.device_pool, worker_name="doomed@box")
    assert claimed.pk == job.pk
    long_ago = timezone.now() - timezone.timedelta(seconds=settings.JOB_LOST_AFTER_S + 60)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=long_ago)
    return claimed


def shown(job: Job, kind: str) -> list[dict]:
    return [e.data for e in job.events.filter(kind=kind, superseded=False).order_by("seq")]


def test_a_checkpoint_half_written_when_the_worker_died_is_passed_over(member, team, settings, tmp_path):
    job = job_create(kind="train", team=team, owner=member, config={"max_steps": 12})
    root = job_output_dir(job.pk) / "checkpoints"
    # Killed after writing step 8's state file, before renaming step-0000008.partial into place.
    for name in ("step-0000004", "step-0000008.partial"):
        (root / name).mkdir(parents=True)
        (root / name / "trainer_state.json").write_text("{}")
    assert latest(root).name == "step-0000004"
    claimed_then_lost(job, settings)

    assert jobs_recover_lost() == [job.pk]
    job.refresh_from_db()
    assert job.status == "queued" and job.config["resume_from"] == str(root / "step-0000004")
    rotate(root, keep=2)  # after the resumed run's next save: the dead attempt's partial goes
    assert sorted(p.name for p in root.iterdir()) == ["step-0000004"]


def test_a_checkpoint_written_but_not_reported_when_the_run_was_lost_is_listed_once(member, team, settings):
    """A peer rank killed at the barrier after rank 0's save stops the group before rank 0 reports the
    checkpoint: the job resumes from it, and it is listed among the checkpoints (once, before the requeue)."""
    job = job_create(kind="train", team=team, owner=member, config={"max_steps": 12})
    root = job_output_dir(job.pk) / "checkpoints"
    for name in ("step-0000004", "step-0000005"):
        (root / name).mkdir(parents=True)
        (root / name / "trainer_state.json").write_text("{}")
    claimed = claimed_then_lost(job, settings)
    JobSink(claimed).emit(CheckpointEvent(step=4, path=str(root / "step-0000004")))  # step 5's never came

    assert jobs_recover_lost() == [job.pk]
    assert [c["step"] for c in shown(job, "checkpoint")] == [4, 5]
    requeued = job.events.get(kind="status", data__status="queued", seq__gt=job.events.get(
        kind="checkpoint", data__step=5).seq)
    assert "resuming from step-0000005" in requeued.data["message"]

    # Lost again before its next save: step 5 is listed already, not twice.
    claimed = claimed_then_lost(job, settings)
    assert jobs_recover_lost() == [job.pk]
    assert [c["step"] for c in shown(job, "checkpoint")] == [4, 5]


def test_an_output_recorded_just_before_the_worker_died_is_kept_once(maker_kind, member, team, settings):
    job = job_create(kind="maker", team=team, owner=member, config={})
    claimed = claimed_then_lost(job, settings)
    run_maker(claimed, JobSink(claimed))  # ... and the worker is killed before it records the job's end

    assert jobs_recover_lost() == [job.pk]
    assert run_job(job.pk, worker_name="second@box", pool=job.device_pool) == "succeeded"
    [artifact] = Artifact.objects.filter(job=job)
    assert [e["artifact_id"] for e in shown(job, "artifact")] == [artifact.pk]
    assert [e["eval_loss"] for e in shown(job, "eval")] == [1.5]


def test_a_diet_step_whose_worker_died_after_storing_its_version_makes_it_once(member_client, settings):
    rows = "".join(json.dumps({"instruction": f"Say {w}.", "output": f"{w}!"}) + "\n" for w in ["a", "b", "a"])
    response = member_client.post("/datasets/", {"file": SimpleUploadedFile("rows.jsonl", rows.encode())})
    upload = Dataset.objects.get(pk=int(response.url.rstrip("/").split("/")[-1]))
    member_client.post(f"/datasets/{upload.pk}/diet/dedupe/", {"dedupe-threshold": "0.8"}, HTTP_HX_REQUEST="true")
    operation = DatasetOperation.objects.get(dataset=upload)
    claimed = claimed_then_lost(operation.job, settings)
    run_operation(claimed, JobSink(claimed))  # stores the version, then the worker is killed

    assert jobs_recover_lost() == [claimed.pk]
    assert run_job(claimed.pk, worker_name="second@box", pool=claimed.device_pool) == "succeeded"
    [version] = Dataset.objects.filter(operation="dedupe")
    assert list(operation.results.all()) == [version] and version.row_count == 2
    stored = [str(p) for p in (settings.MEDIA_ROOT / "datasets").rglob("*") if p.is_file()]
    assert sorted(stored) == sorted({upload.file.path, version.file.path})


@pytest.mark.parametrize("holder", ["dead here", "alive here", "dead on another machine"])
def test_a_worker_restarted_under_a_dead_workers_name_takes_its_job_back_at_once(holder, member, team):
    """The launcher restarts a killed worker under the same name within seconds; the job the dead one ran
    is taken back then, before the new one claims another, not JOB_LOST_AFTER_S later. Only where the
    name's last process is certainly gone: on this machine, and no longer there."""
    job = job_create(kind="train", team=team, owner=member, config={})
    job_claim_next(pool=job.device_pool, worker_name="worker-7@box")  # its heartbeat is still fresh
    gone = subprocess.Popen(["true"])
    gone.wait()
    WorkerNode.objects.create(name="worker-7@box", pool="default", pid=os.getpid() if holder == "alive here"
                              else gone.pid, hostname="other" if "another" in holder else socket.gethostname(),
                              started_at=timezone.now(), last_heartbeat_at=timezone.now())
    assert jobs_recover_lost() == []  # by its heartbeat it is not lost yet

    expected = [job.pk] if holder == "dead here" else []
    assert take_back_from_dead_namesake("worker-7@box") == expected
    job.refresh_from_db()
    assert job.status == ("queued" if expected else "running")


@pytest.mark.django_db(transaction=True)  # the heartbeat thread has its own connection: it must see the job
def test_a_heartbeat_that_meets_a_database_error_keeps_beating(member, team, settings, monkeypatch):
    # CI saw SQLite answer "database table is locked" to a heartbeat: the thread died, and a job whose
    # heartbeat stops is taken back as lost while it still runs. The first beat here meets that error.
    import worker.runner
    from django.db import OperationalError

    settings.JOB_HEARTBEAT_S = 0.2
    job = job_create(kind="train", team=team, owner=member, config={})
    job_claim_next(pool=job.device_pool, worker_name="busy@box")
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timezone.timedelta(hours=1))
    beats, real_heartbeat = [], worker.runner.job_heartbeat

    def beat_after_a_locked_table(*, job_id):
        beats.append(job_id)
        if len(beats) == 1:
            raise OperationalError("database table is locked")
        real_heartbeat(job_id=job_id)

    monkeypatch.setattr(worker.runner, "job_heartbeat", beat_after_a_locked_table)
    with worker.runner.Heartbeat(job.pk) as heartbeat:
        while len(beats) < 3:
            assert heartbeat.thread.is_alive(), "the heartbeat thread died on a database error"
            time.sleep(0.05)
    job.refresh_from_db()
    assert timezone.now() - job.heartbeat_at < timezone.timedelta(seconds=30)


def test_a_follower_whose_worker_stopped_beating_sends_its_job_back_to_its_place(member, team, settings):
    """The head of a job on two workers (worker/gang_runs.py) asks while its group runs whether each
    follower's worker still beats. One whose heartbeat is JOB_LOST_AFTER_S old (a machine hung or cut off,
    whose connections never closed) is named; the head then stops its group and the job goes back to the
    queue at its place, to resume from its last checkpoint with the later steps superseded; at its last
    allowed start it fails instead. (tests/web/test_pool_gang.py kills a follower outright.)"""
    settings.JOB_MAX_ATTEMPTS = 2
    job = job_create(kind="train", team=team, owner=member, config={"max_steps": 12})
    Job.objects.filter(pk=job.pk).update(devices=2)
    worker_register(name="follower@box", pool=job.device_pool, hostname="box-2", pid=1, device="CPU",
                    device_memory_mib=1024)
    job_claim_next(pool=job.device_pool, worker_name="head@box", devices=1, rendezvous="127.0.0.1:29400")
    seat = job_join_next(pool=job.device_pool, worker_name="follower@box", devices=1)
    launch = head_launch(Job.objects.get(pk=job.pk))
    assert launch.workers == 2 and launch.lost_follower() == ""

    checkpoint = job_output_dir(job.pk) / "checkpoints" / "step-0000004"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    for step in range(1, 7):
        job_progress(job_id=job.pk, kind="metrics", data={"step": step, "total_steps": 12, "loss": 1.0})
    WorkerNode.objects.filter(name="follower@box").update(
        last_heartbeat_at=timezone.now() - timezone.timedelta(seconds=settings.JOB_LOST_AFTER_S + 1))
    assert launch.lost_follower() == "follower@box"

    assert job_requeue_lost_group(job_id=job.pk, reason="Worker follower@box stopped reporting") == "queued"
    requeued = Job.objects.get(pk=job.pk)
    assert requeued.queue_order == job.queue_order, "back at its place in the queue"
    assert requeued.config["resume_from"] == str(checkpoint)
    assert [m["step"] for m in shown(requeued, "metrics")] == [1, 2, 3, 4], "steps 5 and 6 are redone once"
    assert shown(requeued, "status")[-1]["message"] == ("Worker follower@box stopped reporting; resuming from "
                                                        "step-0000004 on the next free worker")
    assert seat.hold.attempt == 1 and not holding_worker_names(job.device_pool), "both workers are free"

    job_claim_next(pool=job.device_pool, worker_name="head@box", devices=2)  # the second and last start
    assert job_requeue_lost_group(job_id=job.pk, reason="Worker follower@box stopped reporting") == "failed"
    assert "(start 2 of 2); giving up" in Job.objects.get(pk=job.pk).failure_message
