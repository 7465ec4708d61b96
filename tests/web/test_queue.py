"""The team queue: which job a free worker claims, priorities, quotas, and the page."""

import pytest
from django.test import Client
from django.utils import timezone

from studio.accounts.models import Membership
from studio.accounts.services import user_create
from studio.datasets.services import dataset_create_from_file
from studio.jobs.models import Job, TeamQuota
from studio.jobs.services import job_cancel, job_create_train, job_finish
from studio.jobs.services_queue import job_claim_next, job_move, job_set_priority, queue_nudge
from tuning.errors import ConfigError


@pytest.fixture
def dataset(member, team, tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("instruction,output\nq1,a1\nq2,a2\n")
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="pairs.csv")


@pytest.fixture
def admin(team):
    return user_create(username="ada", password="pw-ada-12345", team=team, role=Membership.Role.ADMIN)


@pytest.fixture
def submit(member, team, dataset, tiny_base_model):
    def submit(user=None, name=""):
        return job_create_train(user=user or member, team=team, dataset=dataset, base_model=tiny_base_model,
                                settings_values={"max_steps": 3}, method_params={}, name=name)
    return submit


def claim() -> Job | None:
    return job_claim_next(pool="default", worker_name="w1")


def test_a_free_worker_takes_the_highest_priority_then_the_oldest(submit, admin):
    first, second, urgent = submit(name="first"), submit(name="second"), submit(name="urgent")
    job_set_priority(job=urgent, priority=10, user=admin)
    assert [claim().name for _ in range(3)] == ["urgent", "first", "second"]
    assert claim() is None
    assert Job.objects.get(pk=first.pk).attempts == 1


def test_admins_move_jobs_to_the_front_and_members_may_not(submit, admin, member):
    first, second = submit(name="first"), submit(name="second")
    with pytest.raises(ConfigError, match="Only a team admin can reorder"):
        job_move(job=second, direction="front", user=member)
    job_move(job=second, direction="front", user=admin)
    assert claim().name == "second"


def test_a_cancelled_job_is_never_claimed(submit):
    job = submit()
    job_cancel(job=job)
    assert claim() is None


def test_a_team_at_its_running_limit_waits_and_starts_when_a_job_ends(submit, team):
    TeamQuota.objects.create(team=team, max_running_jobs=1)
    running, waiting = submit(name="a"), submit(name="b")
    assert claim().pk == running.pk
    assert claim() is None  # the second would exceed the limit
    from studio.jobs.selectors_queue import job_wait_reason

    assert job_wait_reason(Job.objects.get(pk=waiting.pk)) == "the team's limit of 1 running job(s) is reached"
    job_finish(job_id=running.pk, status=Job.Status.SUCCEEDED, message="done")
    assert claim().pk == waiting.pk


def test_gpu_hours_quota_counts_this_months_gpu_jobs(submit, team, settings):
    settings.GPU_POOLS = ["gpu"]
    TeamQuota.objects.create(team=team, gpu_hours_per_month=1)
    job = submit()
    Job.objects.filter(pk=job.pk).update(device_pool="gpu", status=Job.Status.SUCCEEDED,
                                         started_at=timezone.now() - timezone.timedelta(hours=2),
                                         finished_at=timezone.now() - timezone.timedelta(minutes=1))
    queued = submit()
    Job.objects.filter(pk=queued.pk).update(device_pool="gpu")
    assert job_claim_next(pool="gpu", worker_name="g1") is None
    from studio.jobs.selectors_queue import job_wait_reason

    assert "used 2.0 of its 1 GPU-hours" in job_wait_reason(Job.objects.get(pk=queued.pk))


def test_the_nudge_wakes_only_pools_with_queued_jobs_and_nothing_running(submit):
    submit()
    assert queue_nudge() == ["default"]
    claim()
    submit()
    assert queue_nudge() == []  # a job runs there: its end will wake the pool


def test_queue_page_shows_positions_and_reasons_and_only_admins_reorder(submit, admin, member, team, outsider):
    TeamQuota.objects.create(team=team, max_running_jobs=1)
    running, waiting = submit(name="running one"), submit(name="waiting one")
    claim()
    client = Client()
    client.force_login(member)
    page = client.get("/jobs/queue/").content.decode()
    assert "running one" in page and "waiting one" in page
    assert "Waits: the team&#x27;s limit of 1 running job(s) is reached" in page
    assert "To front" not in page  # members do not reorder
    assert client.post(f"/jobs/{waiting.pk}/queue-action/", {"action": "priority", "priority": "5"}).status_code == 200
    assert Job.objects.get(pk=waiting.pk).priority == 0

    client.force_login(admin)
    assert "To front" in client.get("/jobs/queue/").content.decode()
    client.post(f"/jobs/{waiting.pk}/queue-action/", {"action": "priority", "priority": "5"})
    assert Job.objects.get(pk=waiting.pk).priority == 5

    client.force_login(outsider)
    assert "waiting one" not in client.get("/jobs/queue/table/").content.decode()
    assert client.post(f"/jobs/{waiting.pk}/queue-action/", {"action": "cancel"}).status_code == 404


def test_members_cancel_only_their_own_jobs(submit, team, member):
    other = user_create(username="bob", password="pw-bob-123456", team=team, role=Membership.Role.MEMBER)
    theirs = submit(user=other)
    client = Client()
    client.force_login(member)
    response = client.post(f"/jobs/{theirs.pk}/queue-action/", {"action": "cancel"})
    assert "Members can cancel only their own jobs" in response.content.decode()
    assert Job.objects.get(pk=theirs.pk).status == Job.Status.QUEUED
    mine = submit()
    client.post(f"/jobs/{mine.pk}/queue-action/", {"action": "cancel"})
    assert Job.objects.get(pk=mine.pk).status == Job.Status.CANCELLED


def test_a_job_in_a_pool_no_live_worker_consumes_says_so(submit, member):
    from datetime import timedelta

    from django.utils import timezone

    from studio.workers.models import WorkerNode

    waiting = submit(name="nobody takes me")
    client = Client()
    client.force_login(member)
    page = client.get("/jobs/queue/").content.decode()
    assert f"no worker consumes the pool &#x27;{waiting.device_pool}&#x27; now" in page
    now = timezone.now()
    WorkerNode.objects.create(name="w@box", pool=f"interactive,{waiting.device_pool}", hostname="box", pid=1,
                              device="CPU", started_at=now, last_heartbeat_at=now)
    assert "no worker consumes" not in client.get("/jobs/queue/").content.decode()
    WorkerNode.objects.filter(name="w@box").update(last_heartbeat_at=now - timedelta(hours=1))  # lost
    assert "no worker consumes" in client.get("/jobs/queue/").content.decode()
