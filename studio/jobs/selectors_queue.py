"""Reads for the team queue: which queued job runs next, why a job waits,
and when each is expected to start and finish."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, JSONField, Max, OuterRef, Q, Subquery, Sum
from django.utils import timezone

from studio.accounts.selectors import team_ids_for_user
from studio.jobs.fair_share import fair_share_note, pool_usage, run_time_since
from studio.jobs.models import Job, JobEvent, QueueTurn, TeamQuota
from studio.jobs.queue_turns import queue_turns_refresh
from studio.workers.selectors import pool_device_memory_mib, pools_with_live_workers

ACTIVE = Job.HOLDING_WORKER
JOBS, TURNS = Job._meta.db_table, QueueTurn._meta.db_table
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
    return teams_gpu_hours_this_month([team_id]).get(team_id, 0.0)


def teams_gpu_hours_this_month(team_ids: list[int]) -> dict[int, float]:
    """``team_gpu_hours_this_month`` of each of ``team_ids``, in one query (teams without any left out)."""
    if not settings.GPU_POOLS or not team_ids:
        return {}
    now, since = timezone.now(), _month_start()
    spent = Job.everything.filter(team_id__in=team_ids, device_pool__in=settings.GPU_POOLS,
                                  started_at__isnull=False) \
        .filter(Q(status__in=ACTIVE) | Q(finished_at__gte=since)) \
        .values("team_id").annotate(spent=Sum(run_time_since(since, now)))
    return {row["team_id"]: max(row["spent"].total_seconds(), 0) / 3600 for row in spent if row["spent"]}


def _running_limit_reason(limit: int) -> str:
    return f"the team's limit of {limit} running job(s) is reached"


def _gpu_hours_reason(used: float, limit: float) -> str:
    return f"the team used {used:.1f} of its {limit:g} GPU-hours this month; an admin can raise the quota"


def quota_wait_reason(team_id: int, *, gpu_pool: bool) -> str:
    """Why a job of the team may not start now because of its quota ("" when it may)."""
    quota = TeamQuota.objects.filter(team_id=team_id).first()
    if quota is None:
        return ""
    if quota.max_running_jobs:
        running = Job.objects.filter(team_id=team_id, status__in=ACTIVE).count()
        if running >= quota.max_running_jobs:
            return _running_limit_reason(quota.max_running_jobs)
    if gpu_pool and quota.gpu_hours_per_month:
        used = team_gpu_hours_this_month(team_id)
        if used >= quota.gpu_hours_per_month:
            return _gpu_hours_reason(used, quota.gpu_hours_per_month)
    return ""


def quota_wait_reasons(quotas: list[tuple[int, int, float]], *, gpu_pool: bool) -> dict[int, str]:
    """``quota_wait_reason`` of every team with a quota ((team, max running jobs, GPU-hours a month) rows), in
    at most two queries whatever the number of teams; teams that may start a job left out."""
    ids = [team_id for team_id, _, _ in quotas]
    running = dict(Job.objects.filter(team_id__in=ids, status__in=ACTIVE).values("team_id")
                   .annotate(count=Count("pk")).values_list("team_id", "count")) if ids else {}
    hours = teams_gpu_hours_this_month([team_id for team_id, _, limit in quotas if limit]) if gpu_pool else {}
    reasons = {}
    for team_id, max_running, gpu_hours in quotas:
        if max_running and running.get(team_id, 0) >= max_running:
            reasons[team_id] = _running_limit_reason(max_running)
        elif gpu_pool and gpu_hours and hours.get(team_id, 0.0) >= gpu_hours:
            reasons[team_id] = _gpu_hours_reason(hours.get(team_id, 0.0), gpu_hours)
    return reasons


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


# Queued rows of the user's teams shown per pool, the page saying how many more wait: rendering a row costs
# more than ranking it (bench/queue_page.py), and the next ones are what a viewer acts on.
SHOWN_PER_POOL = 10


def queue_rows_for_user(*, user) -> list[QueueRow]:
    return queue_page_for_user(user=user).rows


@dataclass
class PoolAtWork:
    """Who has jobs in a pool: the teams with queued jobs, the (team, person) pairs queuing, the teams running,
    and a fingerprint that changes whenever a job there is queued, claimed, ended, moved, reprioritised or
    changes hands."""
    queued_teams: set = field(default_factory=set)
    queued_per_team: dict = field(default_factory=dict)
    queuing_people: set = field(default_factory=set)
    running_teams: set = field(default_factory=set)
    fingerprint: list = field(default_factory=list)


def pools_at_work() -> dict[str, PoolAtWork]:
    """Every pool with queued or running jobs, and who has them: one aggregate query, a row per pool, team,
    person and status (never one per job)."""
    pools: dict[str, PoolAtWork] = {}
    rows = Job.objects.filter(status__in=(*ACTIVE, Job.Status.QUEUED)).order_by() \
        .values_list("device_pool", "team_id", "owner_id", "status") \
        .annotate(count=Count("pk"), last=Max("pk"), priorities=Sum("priority"), orders=Sum("queue_order"),
                  steps=Count("pk", filter=Q(depends_on__isnull=False)))
    for pool, team_id, owner_id, status, *summary in rows:
        at_work = pools.setdefault(pool, PoolAtWork())
        if status == Job.Status.QUEUED:
            at_work.queued_teams.add(team_id)
            at_work.queued_per_team[team_id] = at_work.queued_per_team.get(team_id, 0) + summary[0]
            at_work.queuing_people.add((team_id, owner_id))
        else:
            at_work.running_teams.add(team_id)
        at_work.fingerprint.append((team_id or 0, owner_id or 0, status, *summary))
    for at_work in pools.values():
        at_work.fingerprint.sort()
    return pools


# The queued rows a poll shows are kept per pool and set of teams until the pool's fingerprint, the quotas or
# the live workers change; this bounds only how stale positions may get as running jobs' usage grows.
ROWS_MEMO_S = 30


def queue_page_for_user(*, user, shown_per_pool: int | None = None) -> QueuePage:
    """Running and queued jobs of the user's teams, pool by pool, in the
    order they run, with estimates.

    Positions count every queued job of the pool, other teams' too, in
    the order of their stored turns (``queue_turns``: ranked by the
    database when the queue changes, not at each poll): the database
    returns only the user's teams' first ``shown_per_pool`` rows per pool
    and, for each, its position and the work queued ahead of it, counted
    over the rows up to the last shown: a poll costs a fixed number of
    queries and no loop over the queue, however long it is
    (``tests/web/test_queue_queries.py``, ``bench/queue_page.py``). Those
    rows are kept (``ROWS_MEMO_S``) for the next poll of the same teams
    until the pool's jobs change; the estimates are made at each poll."""
    shown_per_pool = SHOWN_PER_POOL if shown_per_pool is None else shown_per_pool
    team_ids = set(team_ids_for_user(user=user))
    pools = {pool: at_work for pool, at_work in pools_at_work().items()
             if team_ids & (at_work.queued_teams | at_work.running_teams)}
    if not pools:
        return QueuePage([], {})
    served = pools_with_live_workers()
    quotas = list(TeamQuota.objects.order_by("team_id").values_list("team_id", "max_running_jobs",
                                                                     "gpu_hours_per_month"))
    held_back: dict[bool, dict[int, str]] = {}  # GPU pool or not -> team -> why its quota holds it back
    picked: list[tuple[int, dict, tuple | None]] = []  # (job id, its row's fields, what fair share's note reads)
    more: dict[str, int] = {}
    for pool, at_work in sorted(pools.items()):
        now = timezone.now()
        running = list(Job.objects.filter(device_pool=pool, status__in=ACTIVE)
                       .annotate(last=last_event_data(("metrics", "progress"))).values("pk", "team_id", "last"))
        frees = []  # when each running job is expected to end (None: it reported no ETA)
        for job in running:
            remaining = (job["last"] or {}).get("eta_s")
            frees.append(now + timedelta(seconds=remaining) if remaining is not None else None)
            if job["team_id"] in team_ids:
                picked.append((job["pk"], {"position": None, "reason": "", "finishes_at": frees[-1]}, None))
        if not team_ids & at_work.queued_teams:
            continue
        gpu_pool = pool in settings.GPU_POOLS
        if gpu_pool not in held_back:
            held_back[gpu_pool] = quota_wait_reasons(quotas, gpu_pool=gpu_pool)
        key = f"queue-rows:{pool}:{sorted(team_ids)}:{shown_per_pool}"
        version = (at_work.fingerprint, quotas, held_back[gpu_pool], pool in served, settings.FAIR_SHARE,
                   settings.FAIR_SHARE_HALF_LIFE_HOURS, tuple(settings.GPU_POOLS))
        memo = cache.get(key)
        if memo is None or memo[0] != version:
            queue_turns_refresh(pool=pool)
            usage = (pool_usage(pool) if settings.FAIR_SHARE and len(at_work.queuing_people) > 1 else None)
            memo = (version, usage, _users_queued_rows(pool, team_ids=sorted(team_ids), held=held_back[gpu_pool],
                                                       limit=shown_per_pool))
            cache.set(key, memo, ROWS_MEMO_S)
        _, usage, rows = memo
        # the pool's recent speed changes only as its jobs end: read once a minute for the page's estimates
        step_s = cache.get_or_set(f"queue-step-s:{pool}", lambda pool=pool: seconds_per_step(pool), 60)
        fair = (usage, at_work.queued_teams) if usage else None
        picked += [(row["id"], _queued_row(row, pool=pool, served=pool in served, held=held_back[gpu_pool],
                                           step_s=step_s, frees=frees, now=now), fair) for row in rows]
        hidden = sum(at_work.queued_per_team.get(team_id, 0) for team_id in team_ids) - len(rows)
        if hidden:
            more[pool] = hidden
    jobs = Job.objects.select_related("owner", "team").prefetch_related("holds").in_bulk(
        [pk for pk, _, _ in picked])
    page_rows = []
    for pk, facts, fair in picked:
        job = jobs.get(pk)
        if job is None:  # ended or deleted since the rows were read
            continue
        if facts["position"] is None:  # running
            facts["starts_at"] = job.started_at
        page_rows.append(QueueRow(job, order_note=fair_share_note(job, *fair) if fair else "", **facts))
    return QueuePage(page_rows, more)


def _queued_row(row: dict, *, pool: str, served: bool, held: dict[int, str], step_s: float | None, frees: list,
                now: datetime) -> dict:
    """What a queued job's row says: its position, why it waits, and when it should start and end."""
    if row["waiting"]:
        reason = f"waits for job #{row['depends_on_id']} ({row['step_before_status']})"
    else:
        reason = held.get(row["team_id"]) or ("" if served else no_worker_reason(pool))
    starts = finishes = None
    if not reason:  # sums over no rows are NULL; Postgres sums big integers as decimals
        jobs_ahead = int(row["jobs_ahead"] or 0)
        unknown = jobs_ahead if not step_s else int(row["unknown_ahead"] or 0)
        starts = estimated_start(frees, jobs_ahead=jobs_ahead, unknown_ahead=unknown,
                                 work_ahead_s=float(row["steps_ahead"] or 0) * (step_s or 0), now=now)
        if starts and step_s and row["progress_total"]:
            finishes = starts + timedelta(seconds=step_s * row["progress_total"])
    return {"position": int(row["run_position"]), "reason": reason, "starts_at": starts, "finishes_at": finishes}


def estimated_start(frees: list, *, jobs_ahead: int, unknown_ahead: int, work_ahead_s: float,
                    now: datetime) -> datetime | None:
    """When a queued job should start (None: unknown). ``frees``: when each running job of the pool ends (None:
    it reported no ETA; an empty list: the pool is idle, one worker assumed, as for positions). Ahead of the
    job, ``jobs_ahead`` jobs will take a worker, ``unknown_ahead`` of them without an estimate (each holds
    its worker for good, as far as anyone can tell), the others ``work_ahead_s`` seconds in all.

    While fewer known jobs are ahead than workers become free, the job takes the next worker to free up;
    past that, the work ahead is spread evenly over the workers (the fluid approximation of the workers
    taking jobs in turn: close when jobs are of similar length), so the estimate needs only sums the
    database makes, never a walk over the queue."""
    known = sorted(free for free in frees if free is not None) if frees else [now]
    usable = known[unknown_ahead:]
    if not usable:
        return None
    known_ahead = jobs_ahead - unknown_ahead
    if known_ahead < len(usable):
        return max(usable[known_ahead], now)
    busy_s = sum(max((free - now).total_seconds(), 0) for free in usable) + work_ahead_s
    return max(usable[-1], now + timedelta(seconds=busy_s / len(usable)))


def _users_queued_rows(pool: str, *, team_ids: list[int], held: dict[int, str], limit: int) -> list[dict]:
    """The first ``limit`` queued jobs of ``team_ids`` in the pool's run order (their stored turns,
    ``queue_turns``), each with its position, the jobs ahead of it that will take a worker (not held back by a
    quota or waiting for a step before), how many of those have no estimate (no step count) and their steps.
    One query: the database picks the rows by index and counts and sums only the rows up to the last of them
    (fair share interleaves teams, so that is the head of the queue, not all of it)."""
    held_ids = sorted(team_id for team_id, reason in held.items() if reason)
    takes_worker = "waiting = 0" + (f" AND team_id NOT IN ({', '.join(['%s'] * len(held_ids))})" if held_ids else "")
    queued = f"""SELECT t.job_id AS id, t.turn, t.team_id, t.waiting, t.progress_total
      FROM {TURNS} t JOIN {JOBS} j ON j.id = t.job_id
      WHERE t.device_pool = %s AND j.status = %s AND j.device_pool = t.device_pool AND j.deletion_id IS NULL"""
    teams = ", ".join(["%s"] * len(team_ids))
    sql = f"""
    WITH shown AS (SELECT id, turn FROM ({queued}) q WHERE team_id IN ({teams}) ORDER BY turn LIMIT %s),
    ranked AS (
      SELECT q.*, ROW_NUMBER() OVER run_order AS run_position,
        SUM(CASE WHEN {takes_worker} THEN 1 ELSE 0 END) OVER ahead AS jobs_ahead,
        SUM(CASE WHEN {takes_worker} AND progress_total = 0 THEN 1 ELSE 0 END) OVER ahead AS unknown_ahead,
        SUM(CASE WHEN {takes_worker} THEN progress_total ELSE 0 END) OVER ahead AS steps_ahead
      FROM ({queued} AND t.turn <= (SELECT MAX(turn) FROM shown)) q
      WINDOW run_order AS (ORDER BY turn), ahead AS (run_order ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING))
    SELECT r.id, r.team_id, r.run_position, r.waiting, j.depends_on_id, d.status AS step_before_status,
           r.progress_total, r.jobs_ahead, r.unknown_ahead, r.steps_ahead
    FROM ranked r JOIN shown s ON s.id = r.id JOIN {JOBS} j ON j.id = r.id LEFT JOIN {JOBS} d ON d.id = j.depends_on_id
    ORDER BY r.run_position"""
    params = [pool, Job.Status.QUEUED, *team_ids, limit, *held_ids * 3, pool, Job.Status.QUEUED]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)  # in the order they appear
        columns = [column[0] for column in cursor.description]
        return [dict(zip(columns, values)) for values in cursor.fetchall()]


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
