"""Fair share between people and teams (studio/jobs/fair_share.py): among
queued jobs of equal priority, the team and then the person that used the
pool least recently go first; usage decays; priority still wins; an admin's
"to front" reorders within the owner's own jobs; the queue page shows the
order the claims follow and says why, without naming other teams."""

import pytest
from django.test import Client
from django.utils import timezone

from studio.accounts.models import Membership, Team
from studio.accounts.services import user_create
from studio.jobs.fair_share import fair_order, pool_usage
from studio.jobs.models import Job, QueuePool, QueueTurn
from studio.jobs.queue_turns import queue_turns_refresh
from studio.jobs.selectors_queue import queue_rows_for_user
from studio.jobs.services_queue import job_claim_next, job_move, job_set_priority
from tests.web.test_queue import dataset  # noqa: F401 (a fixture)


@pytest.fixture
def people(team, member):
    """alice and bob in the default team, carol in team Blue."""
    blue = Team.objects.create(name="Blue", slug="blue")
    bob = user_create(username="bob", password="pw-bob-12345", team=team)
    carol = user_create(username="carol", password="pw-carol-123", team=blue)
    admin = user_create(username="ada", password="pw-ada-12345", team=team, role=Membership.Role.ADMIN)
    return {"alice": (member, team), "bob": (bob, team), "carol": (carol, blue), "ada": (admin, team)}


@pytest.fixture
def submit(people, dataset, tiny_base_model):  # noqa: F811
    from studio.jobs.services import job_create_train

    def submit(who: str, name: str) -> Job:
        user, team = people[who]
        job = job_create_train(user=people["alice"][0], team=people["alice"][1], dataset=dataset,
                               base_model=tiny_base_model, settings_values={"max_steps": 3}, method_params={},
                               name=name)
        Job.objects.filter(pk=job.pk).update(owner=user, team=team)  # the dataset is alice's; the job theirs
        return Job.objects.get(pk=job.pk)
    return submit


def used(submit, who: str, *, hours: float, ended_hours_ago: float) -> None:
    """A finished job of ``who`` that ran ``hours`` and ended ``ended_hours_ago``."""
    job = submit(who, f"past of {who}")
    end = timezone.now() - timezone.timedelta(hours=ended_hours_ago)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED, finished_at=end,
                                         started_at=end - timezone.timedelta(hours=hours))


def claims(count: int) -> list[str]:
    names = []
    for _ in range(count):
        job = job_claim_next(pool="default", worker_name="w")
        names.append(job.name if job else None)
    return names


def test_one_persons_many_jobs_do_not_block_a_colleagues_one(submit):
    for index in range(1, 5):
        submit("alice", f"alice {index}")
    submit("bob", "bob 1")
    # nobody has used the pool: alice (first in line) starts, then bob, who has nothing running
    assert claims(3) == ["alice 1", "bob 1", "alice 2"]


def test_the_team_that_used_the_pool_least_goes_first_then_its_least_used_person(submit):
    used(submit, "alice", hours=10, ended_hours_ago=1)
    submit("alice", "alice 1")
    submit("bob", "bob 1")
    submit("carol", "carol 1")
    # the default team used 10 h, Blue none: carol first; within the default team bob (0 h) before alice (10 h)
    assert claims(3) == ["carol 1", "bob 1", "alice 1"]


def test_usage_decays_with_the_half_life(submit, settings):
    settings.FAIR_SHARE_HALF_LIFE_HOURS = 10
    used(submit, "alice", hours=8, ended_hours_ago=31)  # three half-lives ago: about 1 h now
    used(submit, "carol", hours=2, ended_hours_ago=1)
    usage = pool_usage("default")
    default_team, blue = Team.objects.get(slug="default"), Team.objects.get(slug="blue")
    assert usage.team(default_team.pk).hours == pytest.approx(8 * 0.5 ** 3, rel=0.15)
    assert usage.team(blue.pk).hours == pytest.approx(2, rel=0.1)
    submit("carol", "carol 1")
    submit("alice", "alice 1")
    assert claims(2) == ["alice 1", "carol 1"]
    # usage older than six half-lives is not read at all (alice's running job is, from its start)
    settings.FAIR_SHARE_HALF_LIFE_HOURS = 5
    assert pool_usage("default").team(default_team.pk).hours < 0.01


def test_priority_still_comes_first_and_fair_share_can_be_turned_off(submit, people, settings):
    used(submit, "alice", hours=10, ended_hours_ago=1)
    submit("alice", "alice 1")
    urgent = submit("alice", "alice urgent")
    submit("bob", "bob 1")
    job_set_priority(job=urgent, priority=5, user=people["ada"][0])
    assert claims(2) == ["alice urgent", "bob 1"]
    settings.FAIR_SHARE = False
    submit("bob", "bob 2")
    assert claims(2) == ["alice 1", "bob 2"]  # first come, first served


def test_to_front_reorders_within_the_owners_own_jobs(submit, people):
    submit("alice", "alice 1")
    submit("bob", "bob 1")
    alice_2 = submit("alice", "alice 2")
    job_move(job=alice_2, direction="front", user=people["ada"][0])
    assert claims(3) == ["alice 2", "bob 1", "alice 1"]


def test_the_page_shows_the_claim_order_and_why_without_naming_other_teams(submit, people):
    used(submit, "alice", hours=3, ended_hours_ago=0.5)
    for name in ("alice 1", "alice 2"):
        submit("alice", name)
    submit("bob", "bob 1")
    submit("carol", "carol 1")
    rows = [row for row in queue_rows_for_user(user=people["bob"][0]) if row.position]
    # carol's job (team Blue, unused) counts in the positions but is not shown to the default team
    assert [(row.position, row.job.name) for row in rows] == [(2, "bob 1"), (3, "alice 1"), (4, "alice 2")]
    assert rows[0].order_note.startswith("fair share: your team used 3.0 device-h recently (half-life 72 h), bob 0.0")
    assert rows[0].order_note.endswith("the least-used other team waiting here 0.0")
    client = Client()
    client.force_login(people["bob"][0])
    page = client.get("/jobs/queue/").content.decode()
    assert "fair share: your team used 3.0 device-h" in page and "Blue" not in page and "carol" not in page
    assert "counts half after 72 h" in page
    # and the claims follow the page
    assert claims(4) == ["carol 1", "bob 1", "alice 1", "alice 2"]


def test_the_order_interleaves_teams_then_people():
    # (pk, priority, team, owner) in queue order: team 1's alice has four jobs, bob one; team 2's carol two
    rows = [(1, 0, 1, 10), (2, 0, 1, 10), (3, 0, 1, 10), (4, 0, 1, 10), (5, 0, 1, 11), (6, 0, 2, 20),
            (7, 0, 2, 20), (8, 5, 1, 10)]
    rows.sort(key=lambda row: -row[1])
    from studio.jobs.fair_share import PoolUsage, Usage

    usage = PoolUsage(teams={1: Usage(hours=5.0)}, owners={10: Usage(hours=5.0)})
    # priority 5 first; then team 2 (unused) and team 1 take turns; team 1's turns alternate bob and alice
    assert fair_order(rows, usage) == [8, 6, 5, 7, 1, 2, 3, 4]
    assert fair_order(rows, None) == [8, 1, 2, 3, 4, 5, 6, 7]


def test_a_long_queue_shows_the_first_rows_of_each_pool_and_counts_the_rest(submit, people, monkeypatch):
    from studio.jobs import selectors_queue

    for index in range(4):
        submit("alice", f"alice {index}")
    submit("carol", "carol 1")  # another team's: counted in positions, never shown nor counted as more
    page = selectors_queue.queue_page_for_user(user=people["alice"][0], shown_per_pool=2)
    assert [row.job.name for row in page.rows] == ["alice 0", "alice 1"] and page.more == {"default": 2}
    monkeypatch.setattr(selectors_queue, "SHOWN_PER_POOL", 2)
    client = Client()
    client.force_login(people["alice"][0])
    assert "Pool default: 2 more queued jobs of your teams after these." in client.get("/jobs/queue/").content.decode()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_database_ranks_a_random_queue_as_the_claims_walk_it(submit, people, settings, seed):
    """The queue page's positions (fair_rank, computed by the database) follow the claims' order (fair_order,
    in Python) on a random queue: three teams, ties in usage, jobs without an owner, three priorities, chain
    steps still waiting for the step before (they keep queue order after the rest of their priority)."""
    import random

    from django.db import connection

    from studio.jobs.fair_rank import ranked_queue_sql
    from studio.jobs.selectors_queue import QUEUE_ORDER

    rng = random.Random(seed)
    green = Team.objects.create(name="Green", slug="green")
    people["dan"] = (user_create(username="dan", password="pw-dan-123456", team=green), green)
    people["eve"] = (user_create(username="eve", password="pw-eve-123456", team=green), green)
    for who in rng.sample(sorted(people), 3):  # some used the pool; the others tie at nothing
        used(submit, who, hours=rng.choice([1.0, 2.0, 2.0]), ended_hours_ago=rng.uniform(0, 5))
    template = submit("alice", "template")
    Job.objects.filter(pk=template.pk).update(status=Job.Status.RUNNING, started_at=timezone.now())
    blocker = submit("bob", "blocker")  # queued: the steps that wait for it cannot start
    Job.objects.bulk_create([Job(
        team=team, owner=None if rng.random() < 0.05 else owner, kind=template.kind, config=template.config,
        status=Job.Status.QUEUED, device_pool="default", priority=rng.choice([0, 0, 0, 5, -1]),
        queue_order=rng.choice([float(n), 7.0]),  # some equal: the id breaks the tie
        depends_on=blocker if rng.random() < 0.1 else None, name=f"random {n}")
        for n, (owner, team) in enumerate(rng.choice(list(people.values())) for _ in range(150))])

    def database_order() -> list[int]:
        from studio.jobs.fair_share import pool_usage as usage_of

        sql, params = ranked_queue_sql("default", usage_of("default") if settings.FAIR_SHARE else None)
        with connection.cursor() as cursor:
            cursor.execute(f"{sql} SELECT id FROM ranked ORDER BY run_position", params)
            return [row[0] for row in cursor.fetchall()]

    queued = Job.objects.filter(device_pool="default", status=Job.Status.QUEUED).order_by(*QUEUE_ORDER)
    rows = list(queued.values_list("pk", "priority", "team_id", "owner_id", "depends_on_id"))
    waiting = {pk for pk, *_, depends_on in rows if depends_on == blocker.pk}
    rank = {pk: index for index, pk in enumerate(fair_order([row[:4] for row in rows if row[0] not in waiting],
                                                            pool_usage("default")))}
    by_priority = {pk: priority for pk, priority, *_ in rows}
    queue_index = {pk: index for index, (pk, *_) in enumerate(rows)}
    claims_order = sorted(by_priority, key=lambda pk: (-by_priority[pk], rank.get(pk, len(rank)), queue_index[pk]))
    assert len(waiting) > 5 and database_order() == claims_order
    # The stored turns are that ranking, and claims walk them (chain steps still waiting are skipped).
    assert stored_turns() == claims_order
    claimed = [job_claim_next(pool="default", worker_name="w").pk for _ in range(20)]
    assert claimed == [pk for pk in claims_order if pk not in waiting][:20]
    settings.FAIR_SHARE = False
    queued_now = [row[0] for row in rows if row[0] not in claimed]
    assert database_order() == queued_now and stored_turns() == queued_now  # other settings: ranked again


def stored_turns(pool: str = "default") -> list[int]:
    """The pool's queued jobs in the order of their stored turns, made current first."""
    queue_turns_refresh(pool=pool)
    return list(QueueTurn.objects.filter(device_pool=pool, job__status=Job.Status.QUEUED).order_by("turn")
                .values_list("job_id", flat=True))


def test_a_job_ending_ranks_the_pool_again_a_claim_or_other_writes_do_not(submit, people):
    from studio.jobs.services import job_finish

    submit("bob", "bob earlier")
    assert claims(1) == ["bob earlier"]
    names = {submit(who, f"{who} 1").pk: f"{who} 1" for who in ("alice", "carol", "bob")}
    # the default team has a job running, Blue none: carol first; in the default team alice (none running)
    assert [names[pk] for pk in stored_turns()] == ["carol 1", "alice 1", "bob 1"]
    blue_user, blue = people["carol"]
    end = timezone.now() - timezone.timedelta(hours=1)
    Job.objects.create(team=blue, owner=blue_user, kind="train", config={}, status=Job.Status.SUCCEEDED,
                       device_pool="default", started_at=end - timezone.timedelta(hours=10), finished_at=end)
    # written past the state machine, and no queued job changed: the turns stand
    assert [names[pk] for pk in stored_turns()] == ["carol 1", "alice 1", "bob 1"]
    job_finish(job_id=Job.objects.get(name="bob earlier").pk, status=Job.Status.SUCCEEDED)
    # a job of the pool ended: ranked again with the usage now (Blue used 10 h; teams still take turns)
    assert [names[pk] for pk in stored_turns()] == ["alice 1", "carol 1", "bob 1"]
    assert claims(3) == ["alice 1", "carol 1", "bob 1"]


def test_a_change_made_past_the_services_shows_on_the_next_claim(submit):
    """The turns are checked against the queued jobs at each read: a priority or place written directly
    (a script, another tool) is ranked in before the next claim."""
    for name in ("alice 1", "alice 2", "alice 3"):
        submit("alice", name)
    assert len(stored_turns()) == 3
    Job.objects.filter(name="alice 3").update(priority=7)
    Job.objects.filter(name="alice 2").update(queue_order=0)
    assert claims(3) == ["alice 3", "alice 2", "alice 1"]


@pytest.mark.parametrize("change", ["nothing", "priority", "queue_order", "team", "owner", "progress_total",
                                    "waiting", "turn deleted"])
def test_each_value_the_ranking_read_written_past_the_services_ranks_the_pool_again(submit, people, change):
    """The check that the turns are current (queue_turns._OUT_OF_STEP) compares every copied value, the
    owner's absence and the waiting flag included; and finds nothing when nothing changed."""
    first, job = submit("alice", "alice 1"), submit("bob", "bob 1")
    stored_turns()
    ranked_at = QueuePool.objects.get(pool="default").ranked_at
    updates = {"nothing": {}, "priority": {"priority": 3}, "queue_order": {"queue_order": 0},
               "team": {"team": people["carol"][1]}, "owner": {"owner": None}, "progress_total": {"progress_total": 7},
               "waiting": {"depends_on": first}}
    if change == "turn deleted":
        QueueTurn.objects.filter(job=job).delete()
    elif updates[change]:
        Job.objects.filter(pk=job.pk).update(**updates[change])
    stored_turns()
    assert (QueuePool.objects.get(pool="default").ranked_at == ranked_at) == (change == "nothing")
    job.refresh_from_db()
    turn = QueueTurn.objects.get(job=job)
    assert ((turn.priority, turn.queue_order, turn.team_id, turn.owner_id, turn.progress_total, turn.waiting)
            == (job.priority, job.queue_order, job.team_id, job.owner_id, job.progress_total,
                int(change == "waiting")))
