"""Fair share: which queued job of a pool runs next among jobs of equal
priority.

Priority still comes first (an admin's lever). Within a priority level, the
team that has used the pool least recently goes first, and within the team
the person who has; their oldest job is taken. "Recently" decays: an hour
of device time counts fully while the job runs and half as much every
``FAIR_SHARE_HALF_LIFE_HOURS`` after it ended (Slurm's fair-share decay), and
jobs that ended more than ``USAGE_HALF_LIVES`` half-lives ago are not read.
Ties (everyone unused, as on a fresh studio) go to whoever has fewer jobs
running, then to the older job, so one person's fifty jobs are interleaved
with a colleague's one rather than run before it.

The order the page shows is the same round-robin the claims follow: the
least-used team's least-used person's oldest job, then the next team's, and
so on, each team's turns going through its people the same way.

Reads only. ``fair_rank`` computes the same order in the database, and
``queue_turns`` stores it as each queued job's turn, which the claims
(``services_queue.job_claim_next``) and the queue page follow; ``fair_order``
is the reference the tests hold them to.
Usage is summed in the database per team, person and hour of the job's end
(a few rows per person and hour, never one row per job).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import timedelta
from itertools import groupby

from django.conf import settings
from django.core.cache import cache
from django.db.models import Count, DateTimeField, DurationField, ExpressionWrapper, F, Sum, Value
from django.db.models.functions import Coalesce, Greatest, TruncHour
from django.utils import timezone

from studio.jobs.models import Job

USAGE_HALF_LIVES = 6  # older usage weighs under 2 %: not read at all


@dataclass
class Usage:
    hours: float = 0.0  # decayed device-hours
    running: int = 0


@dataclass(frozen=True)
class PoolUsage:
    teams: dict[int, Usage]
    owners: dict[int, Usage]

    def team(self, team_id) -> Usage:
        return self.teams.get(team_id) or Usage()

    def owner(self, owner_id) -> Usage:
        return self.owners.get(owner_id) or Usage()


def half_life_hours() -> float:
    return float(settings.FAIR_SHARE_HALF_LIFE_HOURS)


FINISHED_USAGE_TTL_S = 60  # how long a process reuses the ended jobs' usage (it changes only as jobs end)


def pool_usage(pool: str) -> PoolUsage:
    """Decayed device-hours and running jobs of each team and person in ``pool``: the running jobs read now
    (a few rows), the ended ones from a one-minute memo (on SQLite, summing a week of ended jobs costs a
    database function call per job)."""
    finished = cache.get_or_set(_finished_key(pool), lambda: _usage_rows(pool, running=False), FINISHED_USAGE_TTL_S)
    teams: dict[int, Usage] = defaultdict(Usage)
    owners: dict[int, Usage] = defaultdict(Usage)
    for team_id, owner_id, hours, running in [*finished, *_usage_rows(pool, running=True)]:
        for usage in (teams[team_id], owners[owner_id]):
            usage.hours += hours
            usage.running += running
    return PoolUsage(dict(teams), dict(owners))


def _finished_key(pool: str) -> str:
    return f"fair-share:{pool}:{half_life_hours()}"


def pool_usage_forget(pool: str) -> None:
    """A job of the pool ended: its device time moves from the running jobs (read live) to the ended ones,
    whose memo would otherwise leave it out for up to a minute."""
    cache.delete(_finished_key(pool))


def ended_or_now(now):
    """A job's end, or ``now`` while it runs (a database expression)."""
    return Coalesce("finished_at", Value(now, output_field=DateTimeField()))


def run_time_since(since, now):
    """How long a job ran after ``since`` (a database expression summing to a duration)."""
    return ExpressionWrapper(ended_or_now(now) - Greatest(F("started_at"), Value(since)), output_field=DurationField())


def _usage_rows(pool: str, *, running: bool) -> list[tuple[int, int | None, float, int]]:
    """(team, owner, decayed hours, jobs running) per team, person and hour of the job's end, summed by the
    database: the running jobs, or those that ended within USAGE_HALF_LIVES half-lives."""
    now = timezone.now()
    since = now - timedelta(hours=half_life_hours() * USAGE_HALF_LIVES)
    jobs = Job.everything.filter(device_pool=pool, started_at__isnull=False)
    jobs = (jobs.filter(status__in=Job.HOLDING_WORKER) if running
            else jobs.exclude(status__in=Job.HOLDING_WORKER).filter(finished_at__gte=since))
    grouped = (jobs.annotate(ended_hour=TruncHour(ended_or_now(now))).values("team_id", "owner_id", "ended_hour")
               .annotate(spent=Sum(run_time_since(since, now)), count=Count("pk")))
    rows = []
    for row in grouped:
        age_hours = max((now - row["ended_hour"]).total_seconds() / 3600 - 1, 0)  # a bucket's hour may be this one
        hours = max(row["spent"].total_seconds(), 0) / 3600 * 0.5 ** (age_hours / half_life_hours())
        rows.append((row["team_id"], row["owner_id"], hours, row["count"] if running else 0))
    return rows


def _round_robin(queues: list[deque]) -> list:
    """One item from each queue in turn, until all are empty."""
    out = []
    while queues:
        for queue in list(queues):
            out.append(queue.popleft())
            if not queue:
                queues.remove(queue)
    return out


def _level_order(jobs: list[tuple], usage: PoolUsage) -> list[int]:
    """Job ids of one priority level (rows of (pk, priority, team_id, owner_id) in queue order), fairly ordered."""
    first_seen: dict = {}
    by_team: dict[int, dict[int, deque]] = defaultdict(lambda: defaultdict(deque))
    for index, (pk, _, team_id, owner_id) in enumerate(jobs):
        first_seen.setdefault(("team", team_id), index)
        first_seen.setdefault(("owner", team_id, owner_id), index)
        by_team[team_id][owner_id].append(pk)

    def team_key(team_id):
        used = usage.team(team_id)
        return used.hours, used.running, first_seen[("team", team_id)]

    team_turns = []
    for team_id in sorted(by_team, key=team_key):
        people = by_team[team_id]

        def owner_key(owner_id, team_id=team_id):
            used = usage.owner(owner_id)
            return used.hours, used.running, first_seen[("owner", team_id, owner_id)]

        team_turns.append(deque(_round_robin([people[owner] for owner in sorted(people, key=owner_key)])))
    return _round_robin(team_turns)


def fair_order(rows: list[tuple], usage: PoolUsage | None) -> list[int]:
    """Job ids in the order they run: rows are (pk, priority, team_id, owner_id) sorted by priority (highest
    first) then queue order. Without ``usage`` (fair share off) that order is kept."""
    if usage is None:
        return [row[0] for row in rows]
    order = []
    for _, level in groupby(rows, key=lambda row: row[1]):
        order += _level_order(list(level), usage)
    return order


def device_hours_unit(pool: str) -> str:
    return "GPU-h" if pool in settings.GPU_POOLS else "device-h"


def fair_share_note(job: Job, usage: PoolUsage, waiting_team_ids: set[int]) -> str:
    """Why fair share puts ``job`` where it is, for the queue page (other teams are not named)."""
    unit, own = device_hours_unit(job.device_pool), usage.team(job.team_id)
    others = [usage.team(team_id).hours for team_id in waiting_team_ids if team_id != job.team_id]
    note = (f"fair share: your team used {own.hours:.1f} {unit} recently (half-life {half_life_hours():g} h), "
            f"{job.owner.username if job.owner_id else 'its owner'} {usage.owner(job.owner_id).hours:.1f}")
    if others:
        note += f"; the least-used other team waiting here {min(others):.1f}"
    return note
