"""Writes for the team queue. The database holds the queue; Celery only
carries wake-ups: every enqueue sends one ``run_job`` message to the pool,
and the worker that gets it claims the best job of that pool at that moment
(highest priority, then queue order), skipping chain steps still waiting and
teams over their quota. A job that could not start then gets a new wake-up
when a job of its pool ends (``job_finish``) or from the periodic nudge."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Max, Min, Q
from django.utils import timezone

from studio.accounts.policy import Action, job_allows, may_preempt, refusal
from studio.jobs.backfill import ends_before_filter, free_devices, idle_workers, reservation_for
from studio.jobs.events import job_event_record
from studio.jobs.models import Job, JobHold, TeamQuota
from studio.jobs.queue_turns import queue_turns_refresh
from studio.jobs.selectors_queue import ACTIVE, QUEUE_ORDER, queued_in_order, quota_wait_reason
from studio.jobs.state import job_enqueue, job_set_status
from tuning.errors import ConfigError
from tuning.methods import METHODS


# Claims take the first queued job by its stored turn (queue_turns.py); a job the last ranking has not seen
# yet comes after those, in priority then queue order.
BY_TURN = (F("queue_turn__turn").asc(nulls_last=True), *QUEUE_ORDER)


def job_claim_next(*, pool: str, worker_name: str, devices: int | None = None,
                   rendezvous: str = "") -> Job | None:
    """Claim the next job this pool should run (priority, then fair share), or None when none may start.

    ``devices``: how many the claiming worker has (None: as many as any job asks, for callers that do not
    count). A job asking for more starts here only if the pool's idle workers have the rest: this worker
    becomes its head, at ``rendezvous`` (host:port of its torchrun rendezvous), and wakes as many idle
    workers as it needs to join (``job_join_next``). Otherwise that job's devices are reserved and a job
    behind it starts here only if its estimate ends before the reservation does (``backfill``). The claim
    records which worker holds the job's devices (a ``JobHold``).

    Workers claim at once (on Postgres truly in parallel). The order is
    each queued job's stored turn (``queue_turns``: fair share's order,
    ranked by the database when the queue or usage changed, not at every
    claim), so one query takes the first job by turn that is still queued
    and that no other claimer holds, locking its row (``ORDER BY turn ...
    FOR UPDATE SKIP LOCKED LIMIT 1``, the usual database-queue pattern): a
    hundred claimers spread over the head of the queue instead of each
    waiting on its first row, and no claim reads the queue into Python. A
    team with a quota has its quota row locked from the check to the
    commit, so that two workers cannot both see the team under its
    running-jobs limit and both start one of its jobs. (SQLite ignores row
    locks; its IMMEDIATE transactions serialise every claim.)
    bench/claim_throughput.py measures claims per second."""
    gpu_pool = pool in settings.GPU_POOLS
    queue_turns_refresh(pool=pool)
    idle: dict[str, int] = {}
    startable = Q()
    if devices is not None:
        idle = idle_workers(pool, besides=worker_name)
        startable = _startable_here(pool=pool, devices=devices, free=devices + free_devices(pool, idle),
                                    gpu_pool=gpu_pool)
    held_back: set[int] = set()  # teams over their quota: asked once per claim
    while True:
        with transaction.atomic():
            job = _lock_first_free(pool, startable, held_back)
            if job is None:
                return None
            list(TeamQuota.objects.select_for_update().filter(team_id=job.team_id))  # held until the commit
            if quota_wait_reason(job.team_id, gpu_pool=gpu_pool):
                held_back.add(job.team_id)
                continue
            mine = job.devices if devices is None else min(devices, job.devices)
            if job.devices > mine:
                # A head: the idle workers it counts on are counted again after the commit of any other head
                # of the pool. Two claimers counting the same idle workers made two heads that each held a
                # device while waiting for the same followers; with enough of them every worker of the pool
                # waited (bench/queue_simulation.py, 10,000 jobs).
                _lock_heads(pool)
                idle = idle_workers(pool, besides=worker_name)
                free = mine + free_devices(pool, idle)
                if free < job.devices:  # another head took them since: it is reserved for, not started
                    startable = _startable_here(pool=pool, devices=devices, free=free, gpu_pool=gpu_pool)
                    continue
            Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(  # the lock keeps it queued till here
                status=Job.Status.RUNNING, worker_name=worker_name[:200], started_at=timezone.now(),
                heartbeat_at=timezone.now(), attempts=F("attempts") + 1)
            joiners = _joiners(idle, job.devices - mine)
            JobHold.objects.create(job=job, attempt=job.attempts + 1, worker_name=worker_name[:200], devices=mine,
                                   workers=1 + joiners, rendezvous=rendezvous if joiners else "")
            job_event_record(job_id=job.pk, kind="status", data={"status": Job.Status.RUNNING, "worker": worker_name})
            for _ in range(joiners):  # idle workers of the pool, woken to join (job_join_next)
                transaction.on_commit(lambda job=job: job_enqueue(job_id=job.pk, pool=pool))
        return Job.objects.get(pk=job.pk)


def _startable_here(*, pool: str, devices: int, free: int, gpu_pool: bool) -> Q:
    """Which queued jobs of the pool a worker with ``devices`` may start now, ``free`` devices being free in
    the pool with its own (a filter): every job its devices hold up to the first, by turn, that needs more;
    that one too if the free devices hold it (this worker heads it); else the devices it waits for are
    reserved, and after it only jobs of this worker's size whose estimate ends before the reservation
    starts (backfill). Only the jobs that need more devices than this worker has are read (a few)."""
    larger = queued_in_order(pool).filter(devices__gt=devices).order_by(*BY_TURN)
    fitting = Q(devices__lte=devices)
    for pk, team_id, wanted, turn in larger.values_list("pk", "team_id", "devices", "queue_turn__turn"):
        before = Q(queue_turn__turn__lt=turn) if turn is not None else Q(queue_turn__turn__isnull=False)
        # only jobs this worker holds: a ranking committed between this read and the claim may put another
        # larger job before this one, which must not start here without its devices
        ahead = before & fitting
        fitting_behind = fitting & ~before & ~Q(pk=pk)
        if wanted <= free:
            return ahead | Q(pk=pk) | fitting_behind
        if quota_wait_reason(team_id, gpu_pool=gpu_pool):
            continue  # held back by its team's quota: it reserves nothing
        reservation = reservation_for(pool=pool, job_id=pk, devices=wanted, free_devices=free)
        fits = ends_before_filter(reservation, pool)
        return ahead | (fitting_behind & fits) if fits is not None else ahead
    return Q()


def _lock_heads(pool: str) -> None:
    """On Postgres, this transaction's turn to start a job on several of the pool's workers (waited for, held
    until the commit). SQLite's transactions take the database's write lock at their start, which serialises
    claims already."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [zlib.crc32(f"queue-heads:{pool}".encode())])


def _joiners(idle: dict[str, int], missing: int) -> int:
    """How many of the idle workers, the largest first, a job missing ``missing`` devices needs to join it."""
    count = 0
    for size in sorted(idle.values(), reverse=True):
        if missing <= 0:
            break
        missing, count = missing - size, count + 1
    return count


@dataclass(frozen=True)
class Seat:
    """A follower's place in a job that runs on several workers: what it needs to join the head's rendezvous."""

    job: Job
    hold: JobHold
    head: JobHold


def job_join_next(*, pool: str, worker_name: str, devices: int) -> Seat | None:
    """Take a follower's seat in a running job of the pool whose head waits for workers to join it, or None.
    A seat is taken once (the job's row is locked while its holds are counted), and the last follower brings
    the devices still missing; each job still ends once, by its head."""
    heads = (JobHold.objects.filter(role=JobHold.Role.HEAD, workers__gt=1, job__device_pool=pool,
                                    job__status=Job.Status.RUNNING, attempt=F("job__attempts"))
             .select_related("job").order_by("created_at"))
    for head in heads:
        with transaction.atomic():
            job = Job.objects.select_for_update().filter(pk=head.job_id, status=Job.Status.RUNNING,
                                                         attempts=head.attempt).first()
            holds = list(JobHold.objects.filter(job_id=head.job_id, attempt=head.attempt))
            if job is None or len(holds) >= head.workers or worker_name in {h.worker_name for h in holds}:
                continue
            seats, missing = head.workers - len(holds), job.devices - sum(h.devices for h in holds)
            mine = min(devices, missing - (seats - 1))  # leave at least one device to each later seat
            if mine < 1 or (seats == 1 and mine < missing):
                continue
            hold = JobHold.objects.create(job=job, attempt=head.attempt, worker_name=worker_name[:200], devices=mine,
                                          role=JobHold.Role.FOLLOWER)
        return Seat(job, hold, head)
    return None


def _lock_first_free(pool: str, startable: Q, held_back: set[int]) -> Job | None:
    """The first queued job of the pool by turn that ``startable`` allows, of no team in ``held_back``, and
    not locked by another claimer, its row locked until the commit."""
    jobs = queued_in_order(pool).filter(startable).exclude(team_id__in=held_back)
    return jobs.select_for_update(skip_locked=True, of=("self",)).order_by(*BY_TURN).first()


def queue_wake(*, pool: str) -> None:
    """One more wake-up for the pool if something there may start."""
    job = queued_in_order(pool).first()
    if job is not None:
        job_enqueue(job_id=job.pk, pool=pool)


def queue_nudge() -> list[str]:
    """Wake pools that have queued jobs but nothing running: a wake-up can be
    spent while a job was held back (quota), and nothing else would follow.
    Every worker's housekeeping calls it (every JOB_HEARTBEAT_S), so it also
    ranks each pool again as running jobs' device time grows, before a poll
    or a claim finds its turns older than ``queue_turns.TURNS_TTL_S``."""
    idle = []
    for pool in set(queued_in_order().values_list("device_pool", flat=True)):
        queue_turns_refresh(pool=pool, max_age_s=settings.JOB_HEARTBEAT_S)  # running jobs' device time grows
        if not Job.objects.filter(device_pool=pool, status__in=ACTIVE).exists():
            queue_wake(pool=pool)
            idle.append(pool)
    return idle


def _require_admin(user, job: Job) -> None:
    if not job_allows(user=user, job=job, action=Action.REORDER):
        raise ConfigError({"priority": refusal(user=user, action=Action.REORDER, team_id=job.team_id)})


def job_set_priority(*, job: Job, priority: int, user) -> Job:
    _require_admin(user, job)
    if not -100 <= priority <= 100:
        raise ConfigError({"priority": "must be from -100 to 100"})
    Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(priority=priority)
    transaction.on_commit(lambda: queue_turns_refresh(pool=job.device_pool), robust=True)
    job.refresh_from_db()
    return job


def preemption_candidate(job: Job, *, user) -> Job | None:
    """The running job that queued ``job`` may take a worker from: in its
    pool, of lower priority, a training run whose method resumes from a
    checkpoint (never one with nothing to return to), one ``user`` may
    preempt (policy.may_preempt); the lowest priority first, then the one
    that started last."""
    running = Job.objects.filter(device_pool=job.device_pool, status=Job.Status.RUNNING, kind=Job.Kind.TRAIN,
                                 priority__lt=job.priority).order_by("priority", "-started_at")
    for candidate in running:
        method = METHODS.get(candidate.config.get("method", ""))
        if method is not None and method.resumable and may_preempt(user=user, urgent_job=job,
                                                                   running_job=candidate):
            return candidate
    return None


def job_preempt_for(*, job: Job, user) -> Job:
    """Let queued ``job`` take a worker now: the chosen running job saves a
    checkpoint at its next step and goes back to the queue at its old place
    (``services.job_requeue_preempted``); the freed worker claims the queue's
    best job, ``job`` where its priority is the highest. Returns the job
    being preempted."""
    _require_admin(user, job)
    if job.status != Job.Status.QUEUED:
        raise ConfigError({"preempt": f"job #{job.pk} is {job.status}; only a queued job can take a worker"})
    if Job.objects.filter(device_pool=job.device_pool, status=Job.Status.PREEMPTING).exists():
        raise ConfigError({"preempt": f"a job of pool {job.device_pool} is already stopping to free a worker"})
    victim = preemption_candidate(job, user=user)
    if victim is None:
        raise ConfigError({"preempt": f"no running training job of pool {job.device_pool} with a priority below "
                                      f"{job.priority} can pause at a checkpoint (raise this job's priority, or "
                                      f"wait: merges, exports and methods that cannot resume are never stopped)"})
    with transaction.atomic():
        if not Job.objects.filter(pk=victim.pk, status=Job.Status.RUNNING).exists():
            raise ConfigError({"preempt": f"job #{victim.pk} ended meanwhile; its worker is free"})
        job_set_status(victim.pk, Job.Status.PREEMPTING,
                       message=f"Pausing at its next step for job #{job.pk} (priority {job.priority}); it goes back "
                               f"to the queue and resumes from that checkpoint")
    return victim


def job_move(*, job: Job, direction: str, user) -> Job:
    """Move a queued job to the front or the back of its owner's jobs of its
    priority level (as Slurm's ``scontrol top``): fair share decides between
    people, a priority change lifts a job above everyone's."""
    _require_admin(user, job)
    peers = Job.objects.filter(status=Job.Status.QUEUED, device_pool=job.device_pool, priority=job.priority,
                               team_id=job.team_id, owner_id=job.owner_id)
    if direction == "front":
        edge = peers.aggregate(value=Min("queue_order"))["value"]
        new_order = (edge or job.queue_order) - 1
    elif direction == "back":
        edge = peers.aggregate(value=Max("queue_order"))["value"]
        new_order = (edge or job.queue_order) + 1
    else:
        raise ConfigError({"direction": "must be front or back"})
    Job.objects.filter(pk=job.pk, status=Job.Status.QUEUED).update(queue_order=new_order)
    transaction.on_commit(lambda: queue_turns_refresh(pool=job.device_pool), robust=True)  # the next poll reads
    job.refresh_from_db()
    return job
