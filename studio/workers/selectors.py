"""Which workers are alive, lost or stopped, and how many devices and how much memory a pool has."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db.models import Max, QuerySet
from django.utils import timezone

from studio.workers.models import WorkerNode


def _lost_before(now: datetime | None = None) -> datetime:
    # The same limit after which a job's heartbeat counts as lost: a worker
    # and its job are given up on together.
    return (now or timezone.now()) - timezone.timedelta(seconds=settings.JOB_LOST_AFTER_S)


def workers_alive() -> QuerySet[WorkerNode]:
    return WorkerNode.objects.filter(stopped_at__isnull=True, last_heartbeat_at__gte=_lost_before())


def workers_lost() -> QuerySet[WorkerNode]:
    return WorkerNode.objects.filter(stopped_at__isnull=True, last_heartbeat_at__lt=_lost_before())


def pools_with_live_workers() -> set[str]:
    """The queues some alive worker consumes (a worker's ``pool`` lists its queues, comma-separated)."""
    return {queue for pools in workers_alive().values_list("pool", flat=True) for queue in pools.split(",") if queue}


def pool_workers_alive(pool: str) -> list[WorkerNode]:
    """The alive workers that consume ``pool`` (one of the queues their ``pool`` lists)."""
    return [node for node in workers_alive() if pool in node.pool.split(",")]


@dataclass(frozen=True)
class PoolCapacity:
    devices: int  # over the pool's alive workers: the most one job can ask for
    largest: int  # the most devices one worker has
    workers: int


def pool_capacity(pool: str) -> PoolCapacity | None:
    """How many devices the pool's alive workers have together, or None when none is alive (a job sent
    there waits for one; the caller says so rather than guessing)."""
    counts = [node.device_count for node in pool_workers_alive(pool)]
    return PoolCapacity(sum(counts), max(counts), len(counts)) if counts else None


def worker_state(node: WorkerNode, *, now: datetime | None = None) -> str:
    if node.stopped_at is not None:
        return WorkerNode.State.STOPPED
    if node.last_heartbeat_at < _lost_before(now):
        return WorkerNode.State.LOST
    return WorkerNode.State.ALIVE


def pool_device_memory_mib(pool: str) -> int | None:
    """The device memory (MiB) of the largest alive worker in the pool: the
    most a job sent there can hope for. None when no worker of the pool is
    alive (the job would wait; the caller says so rather than guessing)."""
    return workers_alive().filter(pool=pool).aggregate(largest=Max("device_memory_mib"))["largest"]


def worker_rows(*, team_ids) -> list[dict]:
    """Every worker for the workers page, alive first. Workers are shared by
    all teams, but a current job is linked only for the viewer's teams;
    another team's job shows as "busy" without its name."""
    now = timezone.now()
    order = {WorkerNode.State.ALIVE: 0, WorkerNode.State.LOST: 1, WorkerNode.State.STOPPED: 2}
    rows = []
    for node in WorkerNode.objects.select_related("current_job"):
        job = node.current_job
        rows.append({
            "node": node, "state": worker_state(node, now=now),
            "heartbeat_age_s": max(0, int((now - node.last_heartbeat_at).total_seconds())),
            "busy": job is not None, "job": job if job is not None and job.team_id in team_ids else None})
    rows.sort(key=lambda row: (order[row["state"]], row["node"].pool, row["node"].name))
    return rows
