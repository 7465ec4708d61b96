"""The fair order of a pool's queue (``fair_share.fair_order``) computed by
the database, so that the queue is never read into Python to order it:
``queue_turns`` stores this ranking as each queued job's turn, which the
claims and the queue page follow.

``fair_order`` takes turns: within a priority level, teams in order of their
usage key (decayed hours, jobs running, then whoever queued first), and
within a team its people the same way. A round-robin of round-robins is a
sort: a person's k-th job comes in their team's k-th round, so the team's
sequence is ordered by (k, the person's key); the level is then ordered by
(the job's index in its team's sequence, the team's key). Each index is a
``ROW_NUMBER()`` window, so the order is three layers of windows over the
pool's queued rows (four sorts).
The usage keys come from ``fair_share.pool_usage`` (a few rows per team and
person), passed in as dense ranks.

Chain steps still waiting for the step before keep their place in queue
order after the others of their priority, as on the claim side.
``tests/web/test_fair_share.py`` checks this order against ``fair_order`` on
a random queue.
"""

from __future__ import annotations

from studio.jobs.fair_share import PoolUsage, Usage
from studio.jobs.models import Job

JOBS = Job._meta.db_table

# One row per queued job of the pool, with whether it waits for the step before it (and that step's status).
_BASE = f"""
  SELECT j.id, j.priority, j.team_id, j.owner_id, j.queue_order, j.progress_total, j.devices, j.depends_on_id,
         d.status AS step_before_status,
         CASE WHEN j.depends_on_id IS NOT NULL AND d.status <> %s THEN 1 ELSE 0 END AS waiting
  FROM {JOBS} j LEFT JOIN {JOBS} d ON d.id = j.depends_on_id
  WHERE j.status = %s AND j.device_pool = %s AND j.deletion_id IS NULL
"""


def ranked_queue_sql(pool: str, usage: PoolUsage | None) -> tuple[str, list]:
    """``WITH`` clauses (SQL and parameters) ending in ``ranked``: the pool's queued jobs with ``run_position``
    (1 = the next to start) in the order claims follow; first come within a priority where ``usage`` is None
    (fair share off)."""
    params: list = [Job.Status.SUCCEEDED, Job.Status.QUEUED, pool]
    if usage is None:
        return (f"WITH base AS ({_BASE}), ranked AS (SELECT base.*, ROW_NUMBER() OVER run_order AS run_position"
                f" FROM base WINDOW run_order AS (ORDER BY priority DESC, queue_order, id))"), params
    team_used, team_params = _rank_case("team_id", usage.teams)
    owner_used, owner_params = _rank_case("owner_id", usage.owners)
    params += team_params + owner_params
    # A team's and a person's place among those who used the pool as little comes from their first job in
    # queue order, (queue_order, id): two columns, as fair_order's "first seen".
    level = "PARTITION BY waiting, priority"
    sql = f"""WITH base AS ({_BASE}),
    turns AS (
      SELECT base.*, {team_used} AS team_used, {owner_used} AS owner_used,
        ROW_NUMBER() OVER by_owner AS owner_turn,
        FIRST_VALUE(queue_order) OVER by_owner AS owner_first_order, FIRST_VALUE(id) OVER by_owner AS owner_first_id,
        FIRST_VALUE(queue_order) OVER by_team AS team_first_order, FIRST_VALUE(id) OVER by_team AS team_first_id
      FROM base
      WINDOW by_owner AS ({level}, team_id, owner_id ORDER BY queue_order, id),
             by_team AS ({level}, team_id ORDER BY queue_order, id)),
    team_turns AS (
      SELECT turns.*, ROW_NUMBER() OVER ({level}, team_id
        ORDER BY owner_turn, owner_used, owner_first_order, owner_first_id) AS team_turn
      FROM turns),
    ranked AS (
      SELECT team_turns.*, ROW_NUMBER() OVER run_order AS run_position
      FROM team_turns
      WINDOW run_order AS (ORDER BY priority DESC, waiting, CASE WHEN waiting = 1 THEN queue_order END,
        CASE WHEN waiting = 1 THEN id END, team_turn, team_used, team_first_order, team_first_id))"""
    return sql, params


def _rank_case(column: str, used: dict[int | None, Usage]) -> tuple[str, list]:
    """A SQL expression giving each row the dense rank of its ``column``'s (hours, running) key: equal keys
    tie, as in ``fair_order``'s sort, and whoever is not in ``used`` ranks as unused (0 h, nothing running)."""
    keys = sorted({(u.hours, u.running) for u in used.values()} | {(0.0, 0)})
    rank = {key: index for index, key in enumerate(keys)}
    whens, params = [], []
    for key_id, u in used.items():
        if key_id is None:
            whens.append(f"WHEN {column} IS NULL THEN %s")
            params.append(rank[u.hours, u.running])
        else:
            whens.append(f"WHEN {column} = %s THEN %s")
            params += [key_id, rank[u.hours, u.running]]
    if not whens:
        return "%s", [rank[0.0, 0]]
    return f"CASE {' '.join(whens)} ELSE %s END", [*params, rank[0.0, 0]]
