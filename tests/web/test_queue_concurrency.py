"""The queue under real concurrency, on Postgres: 30 jobs of 3 users, 4
worker processes claiming at once (tests/web/queue_worker.py runs the real
``worker.runner.run_job``), while an admin reorders the queue and changes
priorities under them. Each job is claimed and ended exactly once, no event
is lost or doubled, a team's running-jobs quota holds although its jobs are
claimed by four workers at once, and a job moved to the top of the queue
while the others wait starts before them.

It needs a database that several processes share: it runs on the suite's
Postgres pass (``run.py test``; ``python -m tests.postgres pytest ...``)
and is skipped on SQLite, whose test database lives in this process's memory.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from django.db import connection, transaction

from studio.accounts.models import Membership, Team
from studio.accounts.services import default_team, user_create
from studio.jobs.kinds import JOB_KINDS, JobKind, register_job_kind
from studio.jobs.models import Job, TeamQuota
from studio.jobs.selectors_queue import queued_in_order
from studio.jobs.services_queue import job_claim_next, job_move, job_set_priority
from studio.jobs.state import job_create
from studio.workers.services import worker_register
from tests.postgres import database_url_for, is_postgres

REPO = Path(__file__).resolve().parents[2]
POOL = "concurrency"
WORKERS = 4
JOBS_PER_USER = 10
STEPS = 4
TOP = 100  # the highest priority the queue allows; the shuffling below stays under it

pytestmark = pytest.mark.skipif(not is_postgres(os.environ.get("DATABASE_URL")),
                                reason="needs a database shared by several processes: the suite's Postgres pass")


@pytest.fixture
def slow_kind():
    register_job_kind(JobKind(name="slow", label="Slow", run="tests.web.queue_worker.run_slowly"))
    yield
    del JOB_KINDS["slow"]


def _start_workers(go_file: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "studio.test_settings",
           # the workers use the database this test writes to: pytest-django's test database on the same server
           "DATABASE_URL": database_url_for(os.environ["DATABASE_URL"], connection.settings_dict["NAME"])}
    return [subprocess.Popen([sys.executable, "-m", "tests.web.queue_worker", POOL, f"worker-{n}", str(go_file)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for n in range(WORKERS)]


def _shuffle_while_claimed(admins: dict[int, object], seconds: float) -> int:
    """Random priority changes and moves to the front or back of queued jobs, as an admin would click them."""
    rng, changes, until = random.Random(18), 0, time.monotonic() + seconds
    while time.monotonic() < until:
        queued = list(Job.objects.filter(device_pool=POOL, status="queued"))
        if not queued:
            break
        job = rng.choice(queued)
        if rng.random() < 0.5:
            job_set_priority(job=job, priority=rng.randint(-50, 50), user=admins[job.team_id])
        else:
            job_move(job=job, direction=rng.choice(["front", "back"]), user=admins[job.team_id])
        changes += 1
    return changes


@pytest.mark.timeout(300)
def test_thirty_jobs_four_workers_each_claimed_and_ended_once(transactional_db, slow_kind, tmp_path):
    team, rivals = default_team(), Team.objects.create(name="Rivals", slug="rivals")
    TeamQuota.objects.create(team=rivals, max_running_jobs=1)
    users = [user_create(username="ann", password="pw-ann-123", team=team, role=Membership.Role.ADMIN),
             user_create(username="bob", password="pw-bob-123", team=team),
             user_create(username="cat", password="pw-cat-123", team=rivals, role=Membership.Role.ADMIN)]
    admins = {team.pk: users[0], rivals.pk: users[2]}
    jobs = [job_create(kind="slow", team=Membership.objects.get(user=user).team, owner=user, pool=POOL,
                       config={"steps": STEPS, "pause_s": 0.15}, name=f"{user.username}-{n}")
            for n in range(JOBS_PER_USER) for user in users]

    go = tmp_path / "go"
    workers = _start_workers(go)
    try:
        go.touch()
        while not Job.objects.filter(device_pool=POOL, status__in=["running", "succeeded"]).exists():
            time.sleep(0.02)
        changes = _shuffle_while_claimed(admins, seconds=1.5)
        # Two of bob's jobs go to the top while the rest wait: one by priority, the other raised too and then
        # moved to the front of bob's jobs of that level (fair share orders people, a move one person's jobs).
        waiting = list(queued_in_order(POOL).filter(owner=users[1]))
        assert len(waiting) >= 3, "the queue emptied before the test could reorder it; slow the jobs down"
        raised, moved = waiting[-2], waiting[-1]
        # One commit, as one admin action would be: made one by one, a worker claiming between the raise and
        # the move rightly takes the raised job first (CI saw it).
        with transaction.atomic():
            job_set_priority(job=raised, priority=TOP, user=users[0])
            job_set_priority(job=moved, priority=TOP, user=users[0])
            job_move(job=moved, direction="front", user=users[0])
        still_waiting = set(queued_in_order(POOL).filter(team=team).values_list("pk", flat=True))
        outputs = [worker.communicate(timeout=240)[0].decode(errors="replace") for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert all(worker.returncode == 0 for worker in workers), "\n".join(outputs)
    assert changes > 0

    by_id = {job.pk: job for job in Job.objects.filter(pk__in=[job.pk for job in jobs])}
    for job in by_id.values():
        events = list(job.events.order_by("seq").values_list("seq", "kind", "data"))
        statuses = [data["status"] for _, kind, data in events if kind == "status"]
        assert statuses == ["queued", "running", "succeeded"], f"job {job.name}: {statuses}"
        assert job.status == "succeeded" and job.attempts == 1
        assert [seq for seq, _, _ in events] == list(range(1, job.last_seq + 1)), f"job {job.name}: seq gaps"
        assert [data["done"] for _, kind, data in events if kind == "progress"] == list(range(1, STEPS + 1))
    assert len({job.worker_name for job in by_id.values()}) > 1, "one worker took every job: no concurrency shown"

    # The rivals' quota (one running job) held: their jobs ran one after another, never overlapping.
    rival_runs = sorted((job.started_at, job.finished_at) for job in by_id.values() if job.team_id == rivals.pk)
    for (_, end), (start, _) in zip(rival_runs, rival_runs[1:]):
        assert start >= end, "two of the rivals' jobs ran at once despite max_running_jobs=1"

    # The two top jobs started before the jobs that waited with them, except the claims already under way
    # when they were raised (at most one per worker), and the moved one before the raised one.
    start_order = sorted((job for job in by_id.values() if job.pk in still_waiting), key=lambda job: job.started_at)
    position = {job.pk: n for n, job in enumerate(start_order)}
    assert position[moved.pk] < position[raised.pk] < 2 + WORKERS, [job.name for job in start_order]


@pytest.mark.timeout(60)
def test_a_claimer_skips_a_job_another_claimer_holds_instead_of_waiting(transactional_db):
    import psycopg

    team = default_team()
    owner = user_create(username="dan", password="pw-dan-123", team=team)
    first, second = [job_create(kind="train", team=team, owner=owner, pool=POOL, config={}, name=f"job {n}")
                     for n in range(2)]
    url = database_url_for(os.environ["DATABASE_URL"], connection.settings_dict["NAME"])
    with psycopg.connect(url) as other:  # another worker, mid-claim: it holds the first job's row
        other.execute("SELECT id FROM jobs_job WHERE id = %s FOR UPDATE", [first.pk])
        started = time.monotonic()
        claimed = job_claim_next(pool=POOL, worker_name="second-claimer")
        waited = time.monotonic() - started
        other.rollback()
    assert claimed.pk == second.pk, "the claimer took a job another claimer held"
    # waiting for the lock would last until the test's timeout: the other transaction never ends by itself
    assert waited < 10, f"the claimer waited {waited:.1f} s for the other's lock"
    assert job_claim_next(pool=POOL, worker_name="second-claimer").pk == first.pk  # free again: claimed next


@pytest.mark.timeout(60)
def test_a_claimer_counts_the_idle_workers_again_after_another_head_of_the_pool_commits(transactional_db):
    """Two workers claiming at once both counted the same idle worker for a 2-device job each: two heads,
    each holding its device while waiting for that one follower (with many, every worker of a pool waited)."""
    import psycopg

    team = default_team()
    owner = user_create(username="dan", password="pw-dan-123", team=team)
    for name in ("a", "b", "c"):
        worker_register(name=name, pool=POOL, hostname="box", pid=1, device="CPU: test", device_memory_mib=4096,
                        device_count=1, address="127.0.0.1")
    first, second = [job_create(kind="train", team=team, owner=owner, pool=POOL, config={}, name=f"wide {n}")
                     for n in range(2)]
    Job.objects.filter(pk__in=[first.pk, second.pk]).update(devices=2)
    Job.objects.filter(pk=second.pk).update(priority=5)  # the one a takes: b's claim of the first read before this
    url = database_url_for(os.environ["DATABASE_URL"], connection.settings_dict["NAME"])
    claimed = {}

    def claim_on_a():
        try:
            claimed["job"] = job_claim_next(pool=POOL, worker_name="a", devices=1)
        finally:
            connection.close()

    with psycopg.connect(url) as other, psycopg.connect(url, autocommit=True) as watcher:
        # worker b, mid-claim: it heads the first job, counting on c, and has not committed yet; a sees b and c
        # idle and the second job (first in the queue) startable with them
        other.execute("SELECT pg_advisory_xact_lock(%s)", [zlib.crc32(f"queue-heads:{POOL}".encode())])
        other.execute("UPDATE jobs_job SET status = 'running', attempts = 1, worker_name = 'b' WHERE id = %s",
                      [first.pk])
        other.execute("INSERT INTO jobs_jobhold (job_id, attempt, worker_name, devices, role, workers, rendezvous, "
                      "created_at) VALUES (%s, 1, 'b', 1, 'head', 2, '', now())", [first.pk])
        claimer = threading.Thread(target=claim_on_a)
        claimer.start()
        deadline = time.monotonic() + 30
        while not watcher.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                                  ).fetchone()[0]:
            assert claimer.is_alive() and time.monotonic() < deadline, f"a's claim did not wait for b's: {claimed}"
            time.sleep(0.05)
        other.commit()
        claimer.join(30)
    assert claimed["job"] is None, "a started the second 2-device job counting on c, whom the first waits for"
    assert Job.objects.get(pk=second.pk).status == "queued"
