"""The queue page and the job list stay cheap as the queue grows (issue 24:
10,000 queued jobs, bench/queue_page.py): their SQL queries do not grow with
the number of jobs, and a poll that finds the pool's plan current does not
walk the queue again."""

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


def test_queue_polls_cost_the_same_queries_for_3_or_60_jobs_and_a_current_plan_is_reused(submit, member, team):
    colleague = user_create(username="bob", password="pw-bob-123456", team=team)
    first = submit(name="first")
    queue_more(first, 2, [member, colleague])
    client = Client()
    client.force_login(member)
    client.get("/jobs/queue/table/")  # the session and the template caches warm
    Job.objects.filter(name="more 1").update(priority=1)  # the plan is out of date: the next poll walks the queue
    small, page = queries(client, "/jobs/queue/table/")
    assert "more 1" in page
    queue_more(first, 57, [member, colleague])
    large, page = queries(client, "/jobs/queue/table/")
    assert "more 56" not in page and "Pool default: 35 more queued jobs" in page  # 25 of 60 shown, the rest counted
    assert large == small
    # Nothing changed: the poll reads the plan it made, so it makes fewer queries and shows the same rows.
    warm, again = queries(client, "/jobs/queue/table/")
    assert warm < large and again == page
    # A job queued by anyone changes the pool's fingerprint: the next poll shows it at once.
    queue_more(first, 1, [colleague])
    assert "Pool default: 36 more queued jobs" in queries(client, "/jobs/queue/table/")[1]


def test_the_job_list_costs_the_same_queries_for_3_or_60_jobs(submit, member, team):
    first = submit(name="first")
    queue_more(first, 2, [member])
    client = Client()
    client.force_login(member)
    client.get("/")
    small, page = queries(client, "/")
    queue_more(first, 57, [member])
    large, page = queries(client, "/")
    assert "more 56" in page and large == small
