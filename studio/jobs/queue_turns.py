"""Each queued job's stored turn in its pool's run order (``QueueTurn``), so
that a claim takes the first free row by turn and the queue page counts the
rows ahead of the few it shows, instead of ranking the whole queue at every
claim and poll.

A pool's turns are ``fair_rank``'s ranking (the order ``fair_share.fair_order``
defines), written by one set-based statement (``_rank``), and ranked again
when what decides the order changed:

- the queue itself: a job was queued (submitted, requeued after preemption or
  a lost worker, a chain step released), moved, reprioritised, or changed
  owner or pool. One anti-join finds any queued job whose row is missing or
  copied other values (``_out_of_step``), whoever wrote the change;
- usage: a job of the pool was queued or ended through the state machine
  (``queue_turns_changed`` counts it in ``QueuePool.version``), or
  ``TURNS_TTL_S`` passed (running jobs' device time grows: the workers'
  housekeeping ranks sooner), or the fair-share settings changed.

A claim changes none of these: it only takes its row out of the queue (rows
of jobs that left stay until the next ranking; readers join on the job's
status). Within fair share's round-robin the others keep their order; the
running job it adds to its team's count counts from the next ranking. So a
hundred claimers do not rank the pool a hundred times.

Writers that change the order rank the pool after their commit, so that
polls and claims find it current; readers rank it themselves when it is not
(a bulk insert, a test's direct update). On Postgres one process ranks a
pool at a time (an advisory lock, tried, never waited for): the others read
the turns of the ranking before, jobs without a row coming after the rest
in priority and queue order.
"""

from __future__ import annotations

import zlib
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from studio.jobs.fair_rank import ranked_queue_sql
from studio.jobs.fair_share import pool_usage, pool_usage_forget
from studio.jobs.models import Job, QueuePool, QueueTurn

# Running jobs' device time grows, and fair share's order with it: a pool read this long after its last
# ranking is ranked again. The workers' housekeeping ranks sooner (every JOB_HEARTBEAT_S), so a poll or a
# claim seldom has to.
TURNS_TTL_S = 60

JOBS, TURNS = Job._meta.db_table, QueueTurn._meta.db_table
# What a queued job's row must still say for the pool's turns to be current (its waiting flag as fair_rank
# computes it: a chain step whose step before has not succeeded). The turn is joined by its key alone and
# compared after: with every column in the join, Postgres probed the (pool, team) index and filtered a
# team's rows for each queued job (0.15-0.5 s a pool at 2,000 queued, growing with the dead rows each
# ranking leaves), where one primary-key probe a job takes milliseconds.
_OUT_OF_STEP = f"""
  SELECT 1 FROM {JOBS} j
  LEFT JOIN {JOBS} d ON d.id = j.depends_on_id
  LEFT JOIN {TURNS} t ON t.job_id = j.id
  WHERE j.status = %s AND j.device_pool = %s AND j.deletion_id IS NULL
    AND (t.job_id IS NULL OR t.device_pool <> j.device_pool OR t.priority <> j.priority
      OR t.queue_order <> j.queue_order OR t.team_id <> j.team_id OR t.progress_total <> j.progress_total
      OR COALESCE(t.owner_id, 0) <> COALESCE(j.owner_id, 0)
      OR t.waiting <> CASE WHEN j.depends_on_id IS NOT NULL AND d.status <> %s THEN 1 ELSE 0 END)
  LIMIT 1
"""
_COLUMNS = "job_id, device_pool, turn, team_id, owner_id, priority, queue_order, waiting, progress_total"


def turns_basis() -> str:
    """The settings a ranking depends on: turns ranked under others are not current."""
    return f"fair_share={bool(settings.FAIR_SHARE)} half_life={settings.FAIR_SHARE_HALF_LIFE_HOURS}"


def queue_turns_changed(*, job_id: int, ended: bool) -> None:
    """Job ``job_id`` was queued or ``ended`` (its pool's queue or usage changed): counted now, in the caller's
    transaction; the pool is ranked again once it commits."""
    pool = Job.everything.filter(pk=job_id).values_list("device_pool", flat=True).first()
    if pool is None:
        return
    if ended:
        pool_usage_forget(pool)
    QueuePool.objects.filter(pool=pool).update(version=F("version") + 1)

    def after_commit():
        if ended:  # again: a ranking in between may have memoised the usage without this job's end
            pool_usage_forget(pool)
        queue_turns_refresh(pool=pool)

    # robust: the change is committed by then; a failed ranking is redone by the next reader
    transaction.on_commit(after_commit, robust=True)


def queue_turns_refresh(*, pool: str, max_age_s: float = TURNS_TTL_S) -> None:
    """Make the pool's stored turns current (rank it again if they are not, or are older than ``max_age_s``),
    unless another process is ranking it at this moment: then its turns serve meanwhile."""
    if _current(pool, max_age_s):
        return
    with transaction.atomic():
        if not _ranking_lock(pool) or _current(pool, max_age_s):
            return
        _rank(pool)


def _current(pool: str, max_age_s: float) -> bool:
    state = QueuePool.objects.filter(pool=pool).values_list("version", "ranked_version", "basis",
                                                             "ranked_at").first()
    if state is None:
        return False
    version, ranked_version, basis, ranked_at = state
    if (version != ranked_version or basis != turns_basis() or ranked_at is None
            or ranked_at < timezone.now() - timedelta(seconds=max_age_s)):
        return False
    with connection.cursor() as cursor:
        cursor.execute(_OUT_OF_STEP, [Job.Status.QUEUED, pool, Job.Status.SUCCEEDED])
        return cursor.fetchone() is None


def _ranking_lock(pool: str) -> bool:
    """On Postgres, this transaction's lock on ranking ``pool`` (False: another holds it). SQLite's
    transactions take the database's write lock at their start, which serialises rankings already."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [zlib.crc32(f"queue-turns:{pool}".encode())])
        return bool(cursor.fetchone()[0])


def _rank(pool: str) -> None:
    """Replace the pool's turns with a ranking of its queued jobs now: one DELETE and one INSERT ... SELECT
    (fair_rank's window functions), never a walk over the queue in Python."""
    version = QueuePool.objects.filter(pool=pool).values_list("version", flat=True).first()
    if version is None:
        QueuePool.objects.create(pool=pool)
        version = 0
    ranked, params = ranked_queue_sql(pool, pool_usage(pool) if settings.FAIR_SHARE else None)
    with connection.cursor() as cursor:
        # the pool's rows, and those a job now queued here left in another pool (its pool was changed)
        cursor.execute(f"DELETE FROM {TURNS} WHERE device_pool = %s OR job_id IN "
                       f"(SELECT id FROM {JOBS} WHERE device_pool = %s AND status = %s)",
                       [pool, pool, Job.Status.QUEUED])
        cursor.execute(f"""{ranked}
            INSERT INTO {TURNS} ({_COLUMNS})
            SELECT id, %s, run_position, team_id, owner_id, priority, queue_order, waiting, progress_total
            FROM ranked""", [*params, pool])
    QueuePool.objects.filter(pool=pool).update(ranked_version=version, basis=turns_basis(),
                                               ranked_at=timezone.now())
