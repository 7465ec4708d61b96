"""Reads for the team queue: which queued job runs next, why a job waits,
and when each is expected to start and finish."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, JSONField, Max, OuterRef, Q, Subquery, Sum
from django.utils import timezone

from studio.accounts.selectors import team_ids_for_user
from studio.jobs.fair_share import PoolUsage, fair_order, fair_share_note, pool_usage, run_time_since
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
    spent = Job.everything.filter(team_id=team_id, device_pool__in=settings.GPU_POOLS, started_at__isnull=False) \
        .filter(Q(status__in=ACTIVE) | Q(finished_at__gte=since)) \
        .aggregate(spent=Sum(run_time_since(since, now)))["spent"]
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


def last_event_data(kinds: tuple[str, ...]) -> Subquery:
    """The data of a job's newest event of ``kinds``, as a subquery to annotate jobs with (one query for all)."""
    return Subquery(JobEvent.objects.filter(job_id=OuterRef("pk"), kind__in=kinds, superseded=False)
                    .order_by("-seq").values("data")[:1], output_field=JSONField())


def seconds_per_step(pool: str) -> float | None:
    """Median seconds per training step of the pool's recent finished jobs."""
    recent = Job.objects.filter(device_pool=pool, kind=Job.Kind.TRAIN, status=Job.Status.SUCCEEDED,
                                progress_step__gt=0).order_by("-finished_at")[:20]
    rates = [last["elapsed_s"] / last["step"]
             for last in recent.annotate(last=last_event_data(("metrics",))).values_list("last", flat=True)
             if last and last.get("elapsed_s") and last.get("step")]
    return statistics.median(rates) if rates else DEFAULT_STEP_S


@dataclass
class QueueRow:
    job: Job
    position: int | None  # 1 = next to start in its pool; None for running jobs
    reason: str  # why it waits ("" when it is just next in line)
    order_note: str = ""  # why fair share puts it where it is
    starts_at: datetime | None = None
    finishes_at: datetime | None = None


@dataclass
class QueuePage:
    rows: list[QueueRow]
    more: dict[str, int]  # pool -> queued jobs of the user's teams past the rows shown


SHOWN_PER_POOL = 25  # queued rows of the user's teams shown per pool; the page says how many more wait
_NEVER = datetime.max.replace(tzinfo=dt_timezone.utc)


def queue_rows_for_user(*, user) -> list[QueueRow]:
    return queue_page_for_user(user=user).rows


def queue_page_for_user(*, user, shown_per_pool: int | None = None, fresh: bool = False) -> QueuePage:
    """Running and queued jobs of the user's teams, pool by pool, in the
    order they run, with estimates: a pool runs one job per worker; a
    running job ends after its reported ETA; a queued training job takes
    its steps × the pool's recent seconds per step.

    Every queued job of a pool counts in the positions and estimates. That
    walk over the whole queue is a pool's plan (``_pool_plan``): computed at
    most once per PLAN_MEMO_S by a web process for all its viewers, and
    again at once when the pool's queue, its quotas or its live workers
    change (``_fingerprints``, one aggregate query). A poll that finds the
    plans current costs a handful of queries and no loop over the queue;
    ``fresh`` (after an admin's action) recomputes them."""
    shown_per_pool = SHOWN_PER_POOL if shown_per_pool is None else shown_per_pool
    team_ids = set(team_ids_for_user(user=user))
    served = pools_with_live_workers()
    quotas = list(TeamQuota.objects.order_by("team_id").values_list("team_id", "max_running_jobs",
                                                                     "gpu_hours_per_month"))
    quota_reasons: dict[tuple[int, bool], str] = {}  # asked once per team and page, where plans are made
    plans = []
    for pool, fingerprint in sorted(_fingerprints().items()):
        key = f"queue-plan:{pool}:{shown_per_pool}"
        version = (fingerprint, quotas, pool in served, settings.FAIR_SHARE, settings.FAIR_SHARE_HALF_LIFE_HOURS,
                   tuple(settings.GPU_POOLS))
        memo = None if fresh else cache.get(key)
        if memo is None or memo[0] != version:
            memo = (version, _pool_plan(pool, served=pool in served, shown_per_pool=shown_per_pool,
                                        quota_reasons=quota_reasons))
            cache.set(key, memo, PLAN_MEMO_S)
        plans.append(memo[1])
    picked = []  # (plan, running or queued entry) of the user's teams, in page order
    more: dict[str, int] = {}
    for plan in plans:
        picked += [(plan, entry) for entry in plan.running if entry[1] in team_ids]
        queued = sorted((entry for team_id in team_ids for entry in plan.queued.get(team_id, [])),
                        key=lambda entry: entry[2])
        picked += [(plan, entry) for entry in queued[:shown_per_pool]]
        hidden = sum(plan.queued_count.get(team_id, 0) for team_id in team_ids) - min(len(queued), shown_per_pool)
        if hidden:
            more[plan.pool] = hidden
    jobs = Job.objects.select_related("owner", "team").prefetch_related("holds").in_bulk(
        [entry[0] for _, entry in picked])
    rows = []
    for plan, entry in picked:
        job = jobs.get(entry[0])
        if job is None:  # ended or deleted since the plan was made
            continue
        if len(entry) == 3:  # running: (pk, team_id, finishes)
            rows.append(QueueRow(job, None, "", starts_at=job.started_at, finishes_at=entry[2]))
        else:
            pk, _, position, reason, starts, finishes = entry
            note = fair_share_note(job, plan.usage, plan.waiting_teams) if plan.usage else ""
            rows.append(QueueRow(job, position, reason, note, starts, finishes))
    return QueuePage(rows, more)


# A plan is remade at once when its pool's jobs change (the fingerprint); this bounds only how stale the
# estimates may get as running jobs report new ETAs. Polls come every 3 s from each viewer.
PLAN_MEMO_S = 30


@dataclass
class PoolPlan:
    """One pool's queue as the page shows it, for every team: the running jobs (pk, team, expected end) and
    each team's first queued jobs (pk, team, position, reason, starts, finishes), with how many each has."""
    pool: str
    running: list[tuple]
    queued: dict[int, list[tuple]]
    queued_count: dict[int, int]
    usage: PoolUsage | None
    waiting_teams: set[int]


def _fingerprints() -> dict[str, tuple]:
    """Per pool with queued or running jobs, a summary that changes whenever a job is queued, claimed, ended,
    moved, reprioritised or changes hands: one aggregate query over those jobs, grouped by pool."""
    summary = Job.objects.filter(status__in=(*ACTIVE, Job.Status.QUEUED)).values("device_pool").annotate(
        count=Count("pk"), last=Max("pk"), newest=Max("created_at"), priorities=Sum("priority"),
        orders=Sum("queue_order"), teams=Sum("team_id"), owners=Sum("owner_id"), running=Count(
            "pk", filter=Q(status__in=ACTIVE)), steps=Count("pk", filter=Q(depends_on__isnull=False)))
    return {row.pop("device_pool"): tuple(sorted(row.items())) for row in summary}


def _pool_plan(pool: str, *, served: bool, shown_per_pool: int, quota_reasons: dict) -> PoolPlan:
    now = timezone.now()
    running = list(Job.objects.filter(device_pool=pool, status__in=ACTIVE)
                   .annotate(last=last_event_data(("metrics", "progress"))).values("pk", "team_id", "last"))
    free_at, running_rows = [], []
    for job in running:
        remaining = (job["last"] or {}).get("eta_s")
        finish = now + timedelta(seconds=remaining) if remaining is not None else None
        free_at.append(finish)
        running_rows.append((job["pk"], job["team_id"], finish))
    workers = max(len(running), 1)
    free_at = sorted(free_at, key=lambda t: t or _NEVER)[:workers] or [now]
    step_s = seconds_per_step(pool)
    gpu_pool = pool in settings.GPU_POOLS
    queued, usage = _queued_in_run_order(pool)
    shown: dict[int, list[tuple]] = {}
    counts: dict[int, int] = {}
    for position, job in enumerate(queued, start=1):
        team_id = job["team_id"]
        if _waits_for_step_before(job):
            reason = f"waits for job #{job['depends_on_id']} ({job['depends_on__status']})"
        else:
            if (team_id, gpu_pool) not in quota_reasons:
                quota_reasons[team_id, gpu_pool] = quota_wait_reason(team_id, gpu_pool=gpu_pool)
            reason = quota_reasons[team_id, gpu_pool] or ("" if served else no_worker_reason(pool))
        starts = None if reason else free_at[0] if free_at[0] is None else max(free_at[0], now)
        duration = step_s * job["progress_total"] if step_s and job["progress_total"] else None
        finishes = starts + timedelta(seconds=duration) if starts and duration else None
        if starts is not None and not reason:
            free_at[0] = finishes  # that worker is busy until then (unknown when no estimate)
            free_at.sort(key=lambda t: t or _NEVER)
        counts[team_id] = counts.get(team_id, 0) + 1
        if counts[team_id] <= shown_per_pool:
            shown.setdefault(team_id, []).append((job["pk"], team_id, position, reason, starts, finishes))
    return PoolPlan(pool, running_rows, shown, counts, usage, {job["team_id"] for job in queued})


QUEUED_FIELDS = ("pk", "priority", "team_id", "owner_id", "queue_order", "progress_total", "depends_on_id",
                 "depends_on__status")


def _waits_for_step_before(job: dict) -> bool:
    return bool(job["depends_on_id"]) and job["depends_on__status"] != Job.Status.SUCCEEDED


def _queued_in_run_order(pool: str) -> tuple[list[dict], PoolUsage | None]:
    """The pool's queued jobs (dicts of QUEUED_FIELDS) in the order they run (fair share within each
    priority; chain steps still waiting keep their place in queue order after the others of their
    priority), and the usage fair share read (None where it does not apply: off, or one person waiting)."""
    queued = list(Job.objects.filter(device_pool=pool, status=Job.Status.QUEUED).order_by(*QUEUE_ORDER)
                  .values(*QUEUED_FIELDS))
    if not settings.FAIR_SHARE or len({(job["team_id"], job["owner_id"]) for job in queued}) < 2:
        return queued, None  # nobody to share with: first come, first served
    usage = pool_usage(pool)
    rank = {pk: index for index, pk in enumerate(fair_order(
        [(job["pk"], job["priority"], job["team_id"], job["owner_id"]) for job in queued
         if not _waits_for_step_before(job)], usage))}
    queued.sort(key=lambda job: (-job["priority"], rank.get(job["pk"], len(rank)), job["queue_order"], job["pk"]))
    return queued, usage


def pool_tokens_per_s(pool: str, *, base_model_id: int | None) -> float | None:
    """Median training speed (real tokens a second) of the pool's recent jobs
    on this base model: the throughput table pre-flight time estimates read."""
    recent = Job.objects.filter(device_pool=pool, kind=Job.Kind.TRAIN, base_model_id=base_model_id,
                                status=Job.Status.SUCCEEDED).order_by("-finished_at")[:20]
    speeds = [last["tokens_seen"] / last["elapsed_s"]
              for last in recent.annotate(last=last_event_data(("metrics",))).values_list("last", flat=True)
              if last and last.get("tokens_seen") and last.get("elapsed_s")]
    return statistics.median(speeds) if speeds else None


def pool_memory_bytes(pool: str) -> int | None:
    """Device memory of the pool's alive workers, as they registered it (None when none is alive)."""
    mib = pool_device_memory_mib(pool)
    return int(mib * 2**20) if mib else None
