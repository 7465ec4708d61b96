"""The only writer of WorkerNode rows; called by each worker's registry
thread (worker/registry.py), never by the web side."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from studio.jobs.models import Job
from studio.workers.models import WorkerNode


def worker_register(*, name: str, pool: str, hostname: str, pid: int, device: str, device_memory_mib: int,
                    device_count: int = 1, device_kind: str = "cpu", address: str = "") -> WorkerNode:
    """A worker (re)starts: one row per node name, so a restarted worker
    takes over its old row instead of leaving a "lost" ghost behind.
    ``device_memory_mib`` is per device; ``address`` is where the pool's
    other workers reach it (the host name when empty)."""
    now = timezone.now()
    node, _ = WorkerNode.objects.update_or_create(name=name, defaults={
        "pool": pool, "hostname": hostname, "pid": pid, "device": device[:255],
        "device_memory_mib": max(0, int(device_memory_mib)), "device_count": min(max(1, int(device_count)), 64),
        "device_kind": device_kind[:10], "address": (address or hostname)[:255],
        "memory_used_mib": 0, "current_job": None,
        "started_at": now, "last_heartbeat_at": now, "stopped_at": None})
    return node


def worker_heartbeat(*, name: str, current_job_id: int | None, memory_used_mib: int) -> bool:
    """Renew the worker's heartbeat. False when it has no live row (never
    registered, deleted by an admin, or marked stopped): the caller
    registers again. A stopped row is left alone so that a last beat racing
    a clean shutdown cannot bring the worker back to life."""
    if current_job_id is not None and not Job.objects.filter(pk=current_job_id).exists():
        current_job_id = None  # the job was deleted under it; a dangling id would break the foreign key
    return bool(WorkerNode.objects.filter(name=name, stopped_at__isnull=True).update(
        current_job_id=current_job_id, memory_used_mib=max(0, int(memory_used_mib)),
        last_heartbeat_at=timezone.now()))


def workers_purge_gone(*, now=None) -> int:
    """Forget workers stopped, or lost (no heartbeat), more than
    WORKER_HISTORY_HOURS ago: the workers page keeps the live ones and recent
    history. Called by every worker's housekeeping loop; how many went."""
    before = (now or timezone.now()) - timezone.timedelta(hours=settings.WORKER_HISTORY_HOURS)
    gone = Q(stopped_at__lt=before) | Q(stopped_at__isnull=True, last_heartbeat_at__lt=before)
    return WorkerNode.objects.filter(gone).delete()[0]


def worker_stopped(*, name: str) -> None:
    """A clean shutdown: the worker is gone on purpose, not lost."""
    WorkerNode.objects.filter(name=name).update(stopped_at=timezone.now(), current_job=None)
