"""Reservations and backfill for jobs that need more devices than one free
worker has (EASY backfilling, as Slurm's backfill scheduler does it).

When the first job of a pool's run order needs more devices than are free,
the devices it waits for are reserved: it starts when enough running jobs
have ended (the reservation's start, from their reported ETA), on the
workers they free and the idle ones, which join its rendezvous. Meanwhile
an idle worker takes a later job only if that job's own estimate (its steps
× the pool's recent seconds per step, the queue page's estimate) ends
before the reservation starts, so a stream of small jobs cannot starve the
big one and a backfilled job never delays it. A job without an estimate, or
a reservation whose start is unknown (a running job without an ETA), is not
backfilled: unknown never jumps the queue.

Reads only; ``services_queue.job_claim_next`` asks it while claiming.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import F, OuterRef, Q, Subquery, Sum
from django.utils import timezone

from studio.jobs.models import Job, JobEvent, JobHold
from studio.jobs.selectors_queue import ACTIVE, last_event_data, seconds_per_step
from studio.workers.selectors import pool_workers_alive


@dataclass(frozen=True)
class Reservation:
    job_id: int
    devices: int
    starts_at: datetime | None  # when enough devices are expected free; None: unknown


def holding_worker_names(pool: str | None = None) -> set[str]:
    """Workers whose devices a job's current attempt holds (the claiming worker and those that joined it)."""
    holds = JobHold.objects.filter(job__status__in=ACTIVE, attempt=F("job__attempts"))
    if pool is not None:
        holds = holds.filter(job__device_pool=pool)
    return set(holds.values_list("worker_name", flat=True))


def idle_workers(pool: str, *, besides: str = "") -> dict[str, int]:
    """Alive workers of the pool that run nothing now (``besides`` left out), and their devices."""
    busy = holding_worker_names(pool) | {besides}
    return {node.name: node.device_count for node in pool_workers_alive(pool) if node.name not in busy}


def devices_promised(pool: str) -> int:
    """Devices that the pool's running multi-worker jobs still wait for: the idle workers that will join
    them are not free for another job."""
    held = (JobHold.objects.filter(job_id=OuterRef("job_id"), attempt=OuterRef("attempt")).order_by()
            .values("job_id").annotate(total=Sum("devices")).values("total"))
    heads = (JobHold.objects.filter(role=JobHold.Role.HEAD, workers__gt=1, job__device_pool=pool,
                                    job__status=Job.Status.RUNNING, attempt=F("job__attempts"))
             .annotate(held=Subquery(held)).values_list("job__devices", "held"))
    return sum(max(wanted - (held or 0), 0) for wanted, held in heads)


def free_devices(pool: str, idle: dict[str, int]) -> int:
    """Devices of the ``idle`` workers (``idle_workers``) that no running job waits for."""
    return max(sum(idle.values()) - devices_promised(pool), 0)


def reservation_for(*, pool: str, job_id: int, devices: int, free_devices: int,
                    now: datetime | None = None) -> Reservation:
    """When the pool can give job ``job_id`` its ``devices``: ``free_devices`` are free now, and each running
    job frees its workers' devices at its reported ETA, soonest first."""
    now = now or timezone.now()
    sizes = {node.name: node.device_count for node in pool_workers_alive(pool)}
    kinds = ("metrics", "progress")
    reported_at = Subquery(JobEvent.objects.filter(job_id=OuterRef("pk"), kind__in=kinds, superseded=False)
                           .order_by("-seq").values("created_at")[:1])
    running = (Job.objects.filter(device_pool=pool, status__in=ACTIVE).prefetch_related("holds")
               .annotate(last=last_event_data(kinds), last_at=reported_at))
    frees = []
    for job in running:
        remaining = (job.last or {}).get("eta_s")  # seconds left when that event was reported
        freed = sum(sizes.get(hold.worker_name, hold.devices) for hold in job.current_holds()) or job.devices
        frees.append((job.last_at + timedelta(seconds=remaining) if remaining is not None else None, freed))
    need = devices - free_devices
    for finish, freed in sorted(frees, key=lambda item: (item[0] is None, item[0] or now)):
        if finish is None:
            break  # unknown from here on
        need -= freed
        if need <= 0:
            return Reservation(job_id, devices, max(finish, now))
    return Reservation(job_id, devices, None)


def ends_before_filter(reservation: Reservation, pool: str, *, now: datetime | None = None) -> Q | None:
    """A filter of the pool's queued jobs whose own estimate (steps × the pool's recent seconds per step)
    ends before the reservation starts; None when none can (its start or the pool's speed is unknown)."""
    if reservation.starts_at is None:
        return None
    step_s = seconds_per_step(pool)
    if not step_s:
        return None
    room_s = (reservation.starts_at - (now or timezone.now())).total_seconds()
    return Q(progress_total__gt=0, progress_total__lte=room_s / step_s)


def reservation_reasons(rows: list) -> None:
    """The queue page's word on reservations: the first queued job of each pool that needs more devices than
    are idle says so, and from when they are reserved for it (``rows`` are selectors_queue.QueueRow, in run
    order; a row that already waits for another reason keeps it)."""
    seen: set[str] = set()
    for row in rows:
        job = row.job
        if job.status != Job.Status.QUEUED or job.devices < 2 or row.reason or job.device_pool in seen:
            continue
        seen.add(job.device_pool)
        free = free_devices(job.device_pool, idle_workers(job.device_pool))
        if job.devices <= free:
            continue
        reservation = reservation_for(pool=job.device_pool, job_id=job.pk, devices=job.devices, free_devices=free)
        when = (f"from about {timezone.localtime(reservation.starts_at):%H:%M:%S}" if reservation.starts_at
                else "from when running jobs end")
        row.reason = (f"needs {job.devices} devices, {free} free now: they are reserved for it {when}; jobs "
                      f"behind it start meanwhile only if they end before")
        row.starts_at = reservation.starts_at
