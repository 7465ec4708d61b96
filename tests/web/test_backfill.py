"""Reservations and backfill (studio/jobs/backfill.py through
``job_claim_next``): a job that needs more devices than are free reserves
them; an idle worker meanwhile takes only a job whose own estimate ends
before the reservation starts; when enough devices are free the job starts
on several workers, its head claiming it and the idle worker joining it.

The pool: two workers of one device each. Estimates come from the queue's
own figures: the pool's recent seconds per step (one finished job of 1 s a
step) times a queued job's steps; a running job's end from its ETA."""

from __future__ import annotations

import pytest
from django.utils import timezone

from studio.accounts.models import Membership
from studio.accounts.services import user_create
from studio.jobs.backfill import reservation_for
from studio.jobs.models import Job, JobEvent
from studio.jobs.services import job_create_train, job_finish, job_progress
from studio.jobs.services_queue import job_claim_next, job_join_next, job_set_priority
from studio.workers.services import worker_register

POOL = "default"


@pytest.fixture
def dataset(pairs_dataset):
    return pairs_dataset


@pytest.fixture
def pool(db):
    """Two alive workers of one device each, and a history of 1 s per training step."""
    for name in ("a@box", "b@box"):
        worker_register(name=name, pool=POOL, hostname="box", pid=1, device="CPU: test", device_memory_mib=4096,
                        device_count=1, address="127.0.0.1")


@pytest.fixture
def submit(member, team, dataset, tiny_base_model, pool):
    done = job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                            settings_values={"max_steps": 10}, method_params={}, name="history")
    Job.objects.filter(pk=done.pk).update(status="succeeded", progress_step=10, finished_at=timezone.now())
    JobEvent.objects.create(job=done, seq=99, kind="metrics", data={"step": 10, "elapsed_s": 10.0})

    def submit(name: str, *, steps: int, devices: int = 1, user=None) -> Job:
        return job_create_train(user=user or member, team=team, dataset=dataset, base_model=tiny_base_model,
                                settings_values={"max_steps": steps, "devices": devices}, method_params={}, name=name)
    return submit


def claim(worker: str) -> Job | None:
    return job_claim_next(pool=POOL, worker_name=worker, devices=1, rendezvous="127.0.0.1:29400")


def running_with_eta(job: Job, eta_s: float) -> None:
    job_progress(job_id=job.pk, kind="metrics", data={"step": 1, "total_steps": 100, "epoch": 0.0, "loss": 1.0,
                                                     "lr": 0.001, "eta_s": eta_s})


def test_a_stream_of_small_jobs_does_not_starve_a_two_device_job(submit):
    first, second = submit("first", steps=30), submit("second", steps=60)
    assert claim("a@box").pk == first.pk and claim("b@box").pk == second.pk
    running_with_eta(first, 30)
    running_with_eta(second, 60)
    wide = submit("wide", steps=5, devices=2)
    stream = [submit(f"small-{n}", steps=100) for n in range(4)]  # each would end after the reservation starts

    job_finish(job_id=first.pk, status="succeeded")
    assert claim("a@box") is None, "a small job took the device the 2-device job waits for"
    job_finish(job_id=second.pk, status="succeeded")
    started = claim("b@box")
    assert started.pk == wide.pk, "the 2-device job starts as soon as two devices are free"
    seat = job_join_next(pool=POOL, worker_name="a@box", devices=1)
    assert seat.job.pk == wide.pk and (seat.head.worker_name, seat.head.workers) == ("b@box", 2)
    assert seat.head.rendezvous == "127.0.0.1:29400" and seat.hold.devices == 1
    assert job_join_next(pool=POOL, worker_name="c@box", devices=1) is None, "a seat is taken once"
    assert sorted((hold.worker_name, hold.role) for hold in Job.objects.get(pk=wide.pk).current_holds()) == [
        ("a@box", "follower"), ("b@box", "head")]
    assert all(Job.objects.get(pk=job.pk).status == "queued" for job in stream)


def test_a_backfilled_job_ends_before_the_reservation_starts_so_never_delays_it(submit, member_client):
    long = submit("long", steps=60)
    assert claim("b@box").pk == long.pk
    running_with_eta(long, 60)
    wide = submit("wide", steps=5, devices=2)
    too_long = submit("too long", steps=90)  # 90 s at 1 s a step: past the reservation, 60 s from now
    short = submit("short", steps=20)  # 20 s: done before it
    before = reservation_for(pool=POOL, job_id=wide.pk, devices=2, free_devices=1)
    assert 0 < (before.starts_at - timezone.now()).total_seconds() <= 60, before  # 60 s after its report

    page = member_client.get("/jobs/queue/").content.decode()
    assert ("Waits: needs 2 devices, 1 free now: they are reserved for it from about "
            f"{timezone.localtime(before.starts_at):%H:%M}") in page

    backfilled = claim("a@box")
    assert backfilled.pk == short.pk, "only the job that ends before the reservation fills the idle device"
    running_with_eta(backfilled, 20)
    after = reservation_for(pool=POOL, job_id=wide.pk, devices=2, free_devices=0)
    assert abs((after.starts_at - before.starts_at).total_seconds()) < 2, "the backfill moved the reservation"
    assert Job.objects.get(pk=too_long.pk).status == "queued" and Job.objects.get(pk=wide.pk).status == "queued"


def test_a_job_without_an_estimate_is_not_backfilled(submit):
    long = submit("long", steps=60)
    assert claim("b@box").pk == long.pk  # no ETA reported yet: when the reservation starts is unknown
    submit("wide", steps=5, devices=2)
    submit("short", steps=1)
    assert claim("a@box") is None


def test_priorities_and_fair_share_still_order_the_queue_around_a_reservation(submit, team, member):
    admin = user_create(username="ada", password="pw-ada-12345", team=team, role=Membership.Role.ADMIN)
    colleague = user_create(username="cy", password="pw-cy-123456", team=team)
    long = submit("long", steps=60)
    assert claim("b@box").pk == long.pk
    running_with_eta(long, 60)
    wide = submit("wide", steps=5, devices=2)
    mine = [submit(f"mine-{n}", steps=200) for n in range(3)]
    theirs = submit("theirs", steps=200, user=colleague)
    urgent = submit("urgent", steps=200)
    job_set_priority(job=urgent, priority=10, user=admin)
    # Priority lifts a small job above the waiting 2-device job: it is not behind the reservation.
    assert claim("a@box").pk == urgent.pk
    job_finish(job_id=urgent.pk, status="succeeded")
    # Fair share puts the colleague, who used nothing, before member's jobs, the 2-device one among them.
    assert claim("a@box").pk == theirs.pk
    job_finish(job_id=theirs.pk, status="succeeded")
    # Behind the reservation, nothing that ends after it starts; the 2-device job keeps its place.
    assert claim("a@box") is None
    job_finish(job_id=long.pk, status="succeeded")
    assert claim("b@box").pk == wide.pk
    assert job_join_next(pool=POOL, worker_name="a@box", devices=1).job.pk == wide.pk
    job_finish(job_id=wide.pk, status="succeeded")
    assert [claim("a@box").pk, claim("b@box").pk] == [mine[0].pk, mine[1].pk]


def test_a_worker_that_a_waiting_job_counts_on_is_not_counted_free_for_another(submit):
    worker_register(name="c@box", pool=POOL, hostname="box", pid=1, device="CPU: test", device_memory_mib=4096,
                    device_count=1, address="127.0.0.1")
    first, second = submit("first wide", steps=5, devices=2), submit("second wide", steps=5, devices=2)
    head = claim("a@box")
    assert head.pk == first.pk and head.current_holds()[0].workers == 2  # one of the idle workers will join
    # b and c are idle, but one of them is the first job's: a second head would hold b waiting for a worker
    # the first job takes (with more such heads, every worker of a pool waited for another)
    assert claim("b@box") is None, "a second 2-device job started on the worker the first one waits for"
    assert job_join_next(pool=POOL, worker_name="c@box", devices=1).job.pk == first.pk
    assert Job.objects.get(pk=second.pk).status == "queued"
    job_finish(job_id=first.pk, status="succeeded")
    assert claim("b@box").pk == second.pk
    assert job_join_next(pool=POOL, worker_name="a@box", devices=1).job.pk == second.pk
