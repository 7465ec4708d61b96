"""Reads for the team queue: which queued job runs next, why a job waits,
and when each is expected to start and finish."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import DateTimeField, DurationField, ExpressionWrapper, F, Q, Sum, Value
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from studio.accounts.selectors import team_ids_for_user
from studio.jobs.fair_share import fair_order, fair_share_note, pool_usage
from studio.jobs.models import Job, JobEvent, TeamQuota
from studio.workers.selectors import pool_device_memory_mib, pools_with_live_workers

ACTIVE = Job.HOLDING_WORKER
QUEUE_ORDER = ("-priority", "queue_order", "pk")
DEFAULT_STEP_S = None  # no history: the estimate is unknown rather than invented


def waiting_for_step_before() -> Q:
    """Queued jobs that are steps of a chain whose step before has not succeeded."""
    return Q(depends_on__isnull=False) & ~Q(depends_on__status=Job.Status.SUCCEEDED)


def queued_in_order(pool: str | None = None):
    jobs = Job.objects.filter(status=Job.Status.QUEUED).exclude(waiting_for_step_before())
    if pool is not None:
        jobs = jobs.filter(device_pool=pool)
    return jobs.order_by(*QUEUE_ORDER)


def _month_start() -> datetime:
    return timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def team_gpu_hours_this_month(team_id: int) -> float:
    """Hours that the team's jobs on GPU pools ran this calendar month (running ones so far), summed by the
    database."""
    if not settings.GPU_POOLS:
        return 0.0
    now, since = timezone.now(), _month_start()
    end = Coalesce("finished_at", Value(now, output_field=DateTimeField()))
    spent = Job.everything.filter(team_id=team_id, device_pool__in=settings.GPU_POOLS, started_at__isnull=False) \
        .filter(Q(status__in=ACTIVE) | Q(finished_at__gte=since)) \
        .aggregate(spent=Sum(ExpressionWrapper(end - Greatest(F("started_at"), Value(since)),
                                               output_field=DurationField())))["spent"]
    return max(spent.total_seconds(), 0) / 3600 if spent else 0.0


def quota_wait_reason(team_id: int, *, gpu_pool: bool) -> str:
    """Why a job of the team may not start now because of its quota ("" when it may)."""
    quota = TeamQuota.objects.filter(team_id=team_id).first()
    if quota is None:
        return ""
    if quota.max_running_jobs:
        running = Job.objects.filter(team_id=team_id, status__in=ACTIVE).count()
        if running >= quota.max_running_jobs:
            return f"the team's limit of {quota.max_running_jobs} running job(s) is reached"
    if gpu_pool and quota.gpu_hours_per_month:
        used = team_gpu_hours_this_month(team_id)
        if used >= quota.gpu_hours_per_month:
            return (f"the team used {used:.1f} of its {quota.gpu_hours_per_month:g} GPU-hours this month; "
                    f"an admin can raise the quota")
    return ""


def job_wait_reason(job: Job) -> str:
    if job.status != Job.Status.QUEUED:
        return ""
    if job.depends_on_id and job.depends_on.status != Job.Status.SUCCEEDED:
        return f"waits for job #{job.depends_on_id} ({job.depends_on.get_status_display().lower()})"
    return quota_wait_reason(job.team_id, gpu_pool=job.device_pool in settings.GPU_POOLS)


def no_worker_reason(pool: str) -> str:
    return (f"no worker consumes the pool '{pool}' now; the run command starts one for each pool it knows, "
            f"a team deployment needs a worker with -Q {pool} (the Workers page lists who is alive)")


def _seconds_per_step(pool: str) -> float | None:
    """Median seconds per training step of the pool's recent finished jobs."""
    recent = Job.objects.filter(device_pool=pool, kind=Job.Kind.TRAIN, status=Job.Status.SUCCEEDED,
                                progress_step__gt=0).order_by("-finished_at")[:20]
    rates = []
    for job in recent:
        last = JobEvent.objects.filter(job=job, kind="metrics").order_by("-seq").first()
        if last and last.data.get("elapsed_s") and last.data.get("step"):
            rates.append(last.data["elapsed_s"] / last.data["step"])
    return statistics.median(rates) if rates else DEFAULT_STEP_S


def _remaining_s(job: Job) -> float | None:
    """Seconds the running job still needs, from its last progress report."""
    last = JobEvent.objects.filter(job=job, kind__in=("metrics", "progress")).order_by("-seq").first()
    return last.data.get("eta_s") if last else None


@dataclass
class QueueRow:
    job: Job
    position: int | None  # 1 = next to start in its pool; None for running jobs
    reason: str  # why it waits ("" when it is just next in line)
    order_note: str = ""  # why fair share puts it where it is
    starts_at: datetime | None = None
    finishes_at: datetime | None = None


def queue_rows_for_user(*, user) -> list[QueueRow]:
    """Running and queued jobs of the user's teams, pool by pool, in the
    order they run, with estimates: a pool runs one job per worker; a
    running job ends after its reported ETA; a queued training job takes
    its steps × the pool's recent seconds per step."""
    now = timezone.now()
    team_ids = set(team_ids_for_user(user=user))
    rows: list[QueueRow] = []
    pools = Job.objects.filter(status__in=(*ACTIVE, Job.Status.QUEUED)).values_list("device_pool", flat=True)
    served = pools_with_live_workers()
    for pool in sorted(set(pools)):
        running = list(Job.objects.filter(device_pool=pool, status__in=ACTIVE).select_related("owner", "team"))
        free_at = []
        for job in running:
            remaining = _remaining_s(job)
            finish = now + timedelta(seconds=remaining) if remaining is not None else None
            free_at.append(finish)
            if job.team_id in team_ids:
                rows.append(QueueRow(job, None, "", job.started_at, finish))
        workers = max(len(running), 1)
        free_at = sorted(free_at, key=lambda t: t or datetime.max.replace(tzinfo=now.tzinfo))[:workers] or [now]
        step_s = _seconds_per_step(pool)
        queued, notes = _queued_in_run_order(pool)
        position = 0
        for job in queued:
            reason = job_wait_reason(job) or ("" if pool in served else no_worker_reason(pool))
            position += 1
            starts = None if reason else free_at[0] if free_at[0] is None else max(free_at[0], now)
            duration = step_s * job.progress_total if step_s and job.progress_total else None
            finishes = starts + timedelta(seconds=duration) if starts and duration else None
            if starts is not None and not reason:
                free_at[0] = finishes  # that worker is busy until then (unknown when no estimate)
                free_at.sort(key=lambda t: t or datetime.max.replace(tzinfo=now.tzinfo))
            if job.team_id in team_ids:
                rows.append(QueueRow(job, position, reason, notes.get(job.pk, ""), starts, finishes))
    return rows


def _queued_in_run_order(pool: str) -> tuple[list[Job], dict[int, str]]:
    """The pool's queued jobs in the order they run (fair share within each priority; chain steps still
    waiting keep their place in queue order after the others of their priority), and fair share's notes."""
    queued = list(Job.objects.filter(device_pool=pool, status=Job.Status.QUEUED).select_related(
        "owner", "team", "depends_on").order_by(*QUEUE_ORDER))
    if not settings.FAIR_SHARE:
        return queued, {}
    usage = pool_usage(pool)
    eligible = set(queued_in_order(pool).values_list("pk", flat=True))
    rank = {pk: index for index, pk in enumerate(fair_order(
        [(job.pk, job.priority, job.team_id, job.owner_id) for job in queued if job.pk in eligible], usage))}
    queued.sort(key=lambda job: (-job.priority, rank.get(job.pk, len(rank)), job.queue_order, job.pk))
    people = {(job.team_id, job.owner_id) for job in queued}
    if len(people) < 2:
        return queued, {}  # nobody to share with: first come, first served
    teams = {job.team_id for job in queued}
    return queued, {job.pk: fair_share_note(job, usage, teams) for job in queued}


def pool_tokens_per_s(pool: str, *, base_model_id: int | None) -> float | None:
    """Median training speed (real tokens a second) of the pool's recent jobs
    on this base model: the throughput table pre-flight time estimates read."""
    recent = Job.objects.filter(device_pool=pool, kind=Job.Kind.TRAIN, base_model_id=base_model_id,
                                status=Job.Status.SUCCEEDED).order_by("-finished_at")[:20]
    speeds = []
    for job in recent:
        last = JobEvent.objects.filter(job=job, kind="metrics").order_by("-seq").first()
        if last and last.data.get("tokens_seen") and last.data.get("elapsed_s"):
            speeds.append(last.data["tokens_seen"] / last.data["elapsed_s"])
    return statistics.median(speeds) if speeds else None


def pool_memory_bytes(pool: str) -> int | None:
    """Device memory of the pool's alive workers, as they registered it (None when none is alive)."""
    mib = pool_device_memory_mib(pool)
    return int(mib * 2**20) if mib else None
