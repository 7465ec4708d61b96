"""A kind of job is one worker function plus one registration line, and the
one job system gives it everything: queue, claim, events, status, the job
page, the progress component and recovery after a lost worker."""

import pytest
from django.utils import timezone

from studio.jobs.kinds import JOB_KINDS, JobKind, register_job_kind
from studio.jobs.models import Job
from studio.jobs.services import jobs_recover_lost
from studio.jobs.state import job_create
from tuning.errors import ConfigError
from worker.runner import run_job


@pytest.fixture
def countdown_kind():
    register_job_kind(JobKind(name="countdown", label="Countdown", run="tests.web.fake_job_kind.run_countdown"))
    yield JOB_KINDS["countdown"]
    del JOB_KINDS["countdown"]


def test_a_registered_kind_runs_through_the_one_job_system(countdown_kind, member_client, member, team):
    job = job_create(kind="countdown", team=team, owner=member, config={"start": 3})
    assert job.status == "queued" and job.name == "Countdown"
    assert "Countdown" in member_client.get("/jobs/queue/").content.decode()  # one queue for every kind

    assert run_job(job.pk, worker_name="test-worker", pool=job.device_pool) == "succeeded"
    job.refresh_from_db()
    events = list(job.events.values_list("kind", "data"))
    assert [data["status"] for kind, data in events if kind == "status"] == ["queued", "running", "succeeded"]
    assert [data["done"] for kind, data in events if kind == "progress"] == [1, 2, 3]
    assert job.failure_message == "Counted down from 3" and job.progress_step == 3 and job.progress_total == 3
    # Its own kind of work shows on the job page and the job list like any job.
    assert "Counted down from 3" in member_client.get(f"/jobs/{job.pk}/").content.decode()
    listed = member_client.get("/").content.decode()
    assert f"/jobs/{job.pk}/" in listed and '<small class="facts">Countdown</small>' in listed
    assert job.notifications.filter(user=member).count() == 1  # a kind notifies its owner unless it says not to


def test_a_job_of_a_registered_kind_whose_worker_was_lost_starts_again(countdown_kind, member, team, settings):
    job = job_create(kind="countdown", team=team, owner=member, config={"start": 2})
    long_ago = timezone.now() - timezone.timedelta(seconds=settings.JOB_LOST_AFTER_S + 60)
    Job.objects.filter(pk=job.pk).update(status="running", heartbeat_at=long_ago, attempts=1, worker_name="gone@box")
    assert jobs_recover_lost() == [job.pk]
    job.refresh_from_db()
    last = job.events.order_by("-seq").first().data
    assert job.status == "queued" and "starting again" in last["message"] and "resume_from" not in job.config
    assert run_job(job.pk, worker_name="second-worker", pool=job.device_pool) == "succeeded"


def test_a_kind_names_the_pool_its_jobs_go_to(countdown_kind, member, team, settings):
    """Dataset work goes to DATASET_POOL, which training never occupies; other kinds to the device pool; a job
    that names a pool keeps it. The setting is read when the job is made, so a deployment can move either."""
    settings.DATASET_POOL, settings.DEFAULT_DEVICE_POOL = "quick-cpu", "gpu"
    assert JOB_KINDS["analyse"].pool_setting == JOB_KINDS["diet"].pool_setting == "DATASET_POOL"
    assert JOB_KINDS["train"].pool_setting == "DEFAULT_DEVICE_POOL"
    assert job_create(kind="analyse", team=team, owner=member, config={}).device_pool == "quick-cpu"
    assert job_create(kind="countdown", team=team, owner=member, config={"start": 1}).device_pool == "gpu"
    assert job_create(kind="analyse", team=team, owner=member, config={}, pool="other").device_pool == "other"

    register_job_kind(JobKind(name="countdown", label="Countdown", run="tests.web.fake_job_kind.run_countdown",
                              pool_setting="DATASET_POOL"))  # a kind moves with one word
    Job.objects.all().delete()  # the analyses above have no dataset to analyse
    job = job_create(kind="countdown", team=team, owner=member, config={"start": 2})
    assert job.device_pool == "quick-cpu"
    assert run_job(job.pk, worker_name="dataset-worker", pool="quick-cpu") == "succeeded"


def test_an_unknown_kind_is_refused_by_name(member, team):
    with pytest.raises(ConfigError) as refused:
        job_create(kind="no-such-kind", team=team, owner=member, config={})
    assert "unknown job kind 'no-such-kind'" in str(refused.value) and not Job.objects.exists()


def test_steps_a_resumed_run_records_again_are_shown_once(member_client, member, team, settings):
    """A worker died after step 5 with its last checkpoint at step 3: the run resumes from step 3 and records
    steps 4 and 5 again. The events API, the job page's history and the socket's catch-up show each step once,
    the newer record."""
    from studio.jobs.events import job_event_record
    from studio.jobs.selectors import job_events_after

    job = job_create(kind="train", team=team, owner=member, config={})
    for step in range(1, 6):
        job_event_record(job_id=job.pk, kind="metrics", data={"step": step, "loss": 1.0})
        if step == 3:
            job_event_record(job_id=job.pk, kind="checkpoint", data={"step": 3, "path": "checkpoints/step-0000003"})
    checkpoint = settings.MEDIA_ROOT / "jobs" / str(job.pk) / "checkpoints" / "step-0000003"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    long_ago = timezone.now() - timezone.timedelta(seconds=settings.JOB_LOST_AFTER_S + 60)
    Job.objects.filter(pk=job.pk).update(status="running", heartbeat_at=long_ago, attempts=1)
    assert jobs_recover_lost() == [job.pk]
    for step in (4, 5):  # what the resumed run records
        job_event_record(job_id=job.pk, kind="metrics", data={"step": step, "loss": 0.5})

    def steps(events):
        return [(e["data"]["step"], e["data"]["loss"]) for e in events if e["kind"] == "metrics"]

    expected = [(1, 1.0), (2, 1.0), (3, 1.0), (4, 0.5), (5, 0.5)]
    assert steps(job_events_after(job_id=job.pk, after=0)) == expected  # the socket's catch-up and the page
    page = member_client.get(f"/jobs/{job.pk}/events/").json()["events"]
    assert steps(page) == expected
    api = member_client.get(f"/api/v1/fine_tuning/jobs/{job.pk}/events").json()["data"]
    assert steps(api) == expected
    assert [e["data"]["step"] for e in job_events_after(job_id=job.pk, after=0) if e["kind"] == "checkpoint"] == [3]
