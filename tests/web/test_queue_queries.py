"""The queue page and the job list stay cheap as the queue grows (issue 24:
10,000 queued jobs, bench/queue_page.py): their SQL queries do not grow with
the number of jobs (the database ranks, counts and pages; Python reads only
the rows shown), a poll of an unchanged queue reuses the rows ranked for the
last one, and a change shows on the next poll."""

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from studio.accounts.services import user_create
from studio.jobs.models import Job
from tests.web.test_queue import dataset, submit  # noqa: F401 (fixtures)


def queue_more(job: Job, count: int, owners: list) -> None:
    """``count`` more queued jobs like ``job``, owners taking turns (one query, like a busy day's submissions)."""
    last = Job.objects.order_by("-queue_order").first().queue_order
    Job.objects.bulk_create([Job(team=job.team, owner=owners[n % len(owners)], kind=job.kind, config=job.config,
                                 status=Job.Status.QUEUED, device_pool=job.device_pool, queue_order=last + 1 + n,
                                 name=f"more {n}", progress_total=job.progress_total) for n in range(count)])


def queries(client: Client, path: str) -> tuple[int, str]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200
    return len(captured), response.content.decode()


def test_queue_polls_cost_the_same_queries_for_3_or_60_jobs_reuse_rows_and_show_changes(submit, member, team):
    colleague = user_create(username="bob", password="pw-bob-123456", team=team)
    first = submit(name="first")
    queue_more(first, 2, [member, colleague])
    client = Client()
    client.force_login(member)
    client.get("/jobs/queue/table/")  # the session and the template caches warm
    Job.objects.filter(name="more 1").update(priority=1)
    small, page = queries(client, "/jobs/queue/table/")
    assert "more 1" in page
    queue_more(first, 57, [member, colleague])
    large, page = queries(client, "/jobs/queue/table/")
    assert "more 56" not in page and "Pool default: 50 more queued jobs" in page  # 10 of 60 shown, the rest counted
    assert large == small
    # Nothing changed: the poll reuses the rows the database ranked for these teams, and shows the same.
    warm, again = queries(client, "/jobs/queue/table/")
    assert warm < large and again == page
    # A job queued by anyone changes the pool's fingerprint: the next poll ranks again and shows it.
    queue_more(first, 1, [colleague])
    changed, page = queries(client, "/jobs/queue/table/")
    assert "Pool default: 51 more queued jobs" in page and changed == large


def test_the_job_list_costs_the_same_queries_for_3_or_60_jobs_and_pages_them(submit, member, team):
    first = submit(name="first")
    queue_more(first, 2, [member])
    client = Client()
    client.force_login(member)
    client.get("/")
    small, page = queries(client, "/")
    queue_more(first, 57, [member])
    large, page = queries(client, "/")
    assert "more 56" in page and large == small
    assert "more 5<" not in page and "Page 1 of 2 · 60 jobs" in page  # the newest 50 (names end in "</a>")
    older, page = queries(client, "/?page=2")
    assert older == large and "more 5<" in page and "first<" in page and "more 56" not in page
    assert "Page 2 of 2" in queries(client, "/?page=99")[1] and "Page 1 of 2" in queries(client, "/?page=x")[1]


def test_a_claim_leaves_the_turns_as_they_are_a_submission_ranks_the_pool_again(submit, member):
    """Positions are counted over the stored turns of the jobs still queued: after a claim the next in line
    shows as first without ranking the pool again (the claimed job's row stays until the next ranking); a
    submission ranks it again (more queries) and shows in its place."""
    from studio.jobs.models import QueueTurn
    from studio.jobs.services_queue import job_claim_next

    first = submit(name="first")
    queue_more(first, 5, [member])
    client = Client()
    client.force_login(member)
    client.get("/jobs/queue/table/")
    assert job_claim_next(pool=first.device_pool, worker_name="w").pk == first.pk
    after_claim, page = queries(client, "/jobs/queue/table/")
    assert QueueTurn.objects.filter(job=first).exists()  # not ranked again: its row is left
    assert '<td class="num">1</td>' in page and '<td class="num">5</td>' in page  # the five still queued
    assert '<td class="num">6</td>' not in page and page.index("more 0") < page.index("more 4")
    queue_more(first, 1, [member])
    after_submission, page = queries(client, "/jobs/queue/table/")
    assert not QueueTurn.objects.filter(job=first).exists() and '<td class="num">6</td>' in page
    assert after_submission > after_claim
