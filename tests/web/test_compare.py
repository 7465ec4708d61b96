"""The compare page, the job-list sparklines and the chart selectors, on
jobs whose events are recorded the way a worker records them."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from studio.jobs.events import job_event_record
from studio.jobs.models import Job
from studio.jobs.selectors_charts import SPARKLINE_POINTS, config_diff, job_compare_curves, job_loss_sparklines

CONFIG = {"method": "lora", "learning_rate": 0.001, "max_steps": 4, "method_params": {"rank": 8, "alpha": 16},
          "output_dir": "/srv/jobs/1"}


def finished_job(team, owner, *, config, losses, evals=(), trainable=1234, tokens_per_step=100):
    started = timezone.now() - timedelta(seconds=125)
    job = Job.objects.create(team=team, owner=owner, config=config, status=Job.Status.SUCCEEDED,
                             started_at=started, finished_at=started + timedelta(seconds=125))
    for step, loss in enumerate(losses, start=1):
        job_event_record(job_id=job.pk, kind="metrics", data={
            "step": step, "total_steps": len(losses), "epoch": step / 2, "loss": loss, "lr": 0.001,
            "tokens_per_s": tokens_per_step * 2.0, "elapsed_s": step * 0.5})
        if step in dict(evals):
            job_event_record(job_id=job.pk, kind="eval", data={"step": step, "eval_loss": dict(evals)[step]})
    job_event_record(job_id=job.pk, kind="artifact", data={
        "artifact_kind": "adapter", "metadata": {"trainable_parameters": trainable, "steps": len(losses)}})
    return job


@pytest.fixture
def two_jobs(member, team):
    first = finished_job(team, member, config=CONFIG, losses=[3.0, 2.5, 2.0, 1.5], evals=[(2, 2.8), (4, 2.1)])
    second = finished_job(team, member, config={**CONFIG, "learning_rate": 0.01, "output_dir": "/srv/jobs/2",
                                                "method_params": {"rank": 16, "alpha": 16}},
                          losses=[3.1, 2.2, 1.4, 0.9], evals=[(2, 2.4), (4, 2.6)], trainable=2468)
    return first, second


def compare_page(client, *ids):
    return client.get(f"/jobs/compare/?ids={','.join(str(i) for i in ids)}")


def embedded_curves(response) -> list:
    page = response.content.decode()
    return json.loads(page.split('<script id="compare-data" type="application/json">')[1].split("</script>")[0])


def test_compare_page_shows_the_final_figures_and_only_the_differing_settings(member_client, two_jobs):
    first, second = two_jobs
    response = compare_page(member_client, first.pk, second.pk)
    page = response.content.decode()
    assert response.status_code == 200
    # the diff: learning rate and rank differ, alpha and the method do not, server paths are left out
    assert "<code>learning_rate</code>" in page and "<code>method_params.rank</code>" in page
    assert "<code>method_params.alpha</code>" not in page and "<code>method</code>" not in page
    assert "output_dir" not in page
    assert '<td class="differs">0.01</td>' in page and '<td class="differs">16</td>' in page
    # the table: final loss, best eval loss and its step, steps, duration, trainable parameters
    for text in ["1.5000", "0.9000", "2.1000", "2.4000", "at step 2", "2m 05s", "1,234", "2,468"]:
        assert text in page, text


def test_compare_page_carries_both_curves_by_step_and_tokens(member_client, two_jobs):
    first, second = two_jobs
    response = compare_page(member_client, second.pk, first.pk)  # in the order asked for
    curves = embedded_curves(response)
    assert [c["id"] for c in curves] == [second.pk, first.pk]
    train = curves[1]["train"]
    # tokens seen: 200 tokens/s for 0.5 s each step, when the events carry no tokens_seen
    assert train == [[1, 100, 3.0], [2, 200, 2.5], [3, 300, 2.0], [4, 400, 1.5]]
    assert curves[1]["eval"] == [[2, 200, 2.8], [4, 400, 2.1]]
    assert curves[0]["color"] != curves[1]["color"]


def test_tokens_seen_is_used_when_reported_and_a_resumed_run_replaces_repeated_steps(member, team):
    job = Job.objects.create(team=team, owner=member, config={}, status=Job.Status.RUNNING)
    for step, tokens in [(1, 10), (2, 20), (3, 30), (2, 20), (3, 31), (4, 41)]:  # resumed from step 1
        job_event_record(job_id=job.pk, kind="metrics", data={"step": step, "loss": 1.0 / step, "tokens_seen": tokens})
    [curves] = job_compare_curves(jobs=[job])
    assert [point[:2] for point in curves["train"]] == [[1, 10], [2, 20], [3, 31], [4, 41]]
    assert curves["trainable_parameters"] is None and curves["best_eval_loss"] is None


@pytest.mark.parametrize("query, message", [
    ("ids=1", "Pick between 2 and 8 jobs to compare (1 was given)."),
    ("ids=", "Pick between 2 and 8 jobs to compare (0 were given)."),
    ("ids=1,2,3,4,5,6,7,8,9", "Pick between 2 and 8 jobs to compare (9 were given)."),
    ("ids=1,x", "“x” is not a job number."),
])
def test_a_wrong_number_of_jobs_gets_a_clear_message(member_client, query, message):
    response = member_client.get(f"/jobs/compare/?{query}")
    assert response.status_code == 400
    page = response.content.decode()
    assert message in page and "Back to the job list" in page and "compare-chart" not in page


def test_repeated_ids_parameters_from_the_job_list_form_work(member_client, two_jobs):
    first, second = two_jobs
    assert member_client.get(f"/jobs/compare/?ids={first.pk}&ids={second.pk}").status_code == 200


def test_another_teams_job_is_not_found(client, outsider, two_jobs):
    first, second = two_jobs
    client.force_login(outsider)
    assert compare_page(client, first.pk, second.pk).status_code == 404
    mine = finished_job(outsider.memberships.first().team, outsider, config=CONFIG, losses=[1.0, 0.5])
    assert compare_page(client, mine.pk, first.pk).status_code == 404  # one foreign job is enough
    assert compare_page(client, mine.pk, 999999).status_code == 404


def test_job_list_has_a_sparkline_per_job_with_metrics_and_compare_checkboxes(member_client, two_jobs,
                                                                               django_assert_max_num_queries):
    first, _ = two_jobs
    with django_assert_max_num_queries(10):  # the header's teams are one of them, the page count another
        page = member_client.get("/").content.decode()
    assert page.count('<svg class="sparkline"') == 2
    assert f'name="ids" value="{first.pk}"' in page and ">Compare</button>" in page


def test_sparklines_are_downsampled_in_one_query(member, team, django_assert_num_queries):
    long = Job.objects.create(team=team, owner=member, config={}, status=Job.Status.RUNNING)
    for step in range(1, 301):
        job_event_record(job_id=long.pk, kind="metrics", data={"step": step, "loss": 10.0 / step})
    short = Job.objects.create(team=team, owner=member, config={}, status=Job.Status.RUNNING)
    for step in range(1, 4):
        job_event_record(job_id=short.pk, kind="metrics", data={"step": step, "loss": 3.0 - step})
    empty = Job.objects.create(team=team, owner=member, config={})
    with django_assert_num_queries(1):
        lines = job_loss_sparklines(job_ids=[long.pk, short.pk, empty.pk])
    assert set(lines) == {long.pk, short.pk}
    points = [tuple(map(float, p.split(","))) for p in lines[long.pk].split()]
    assert len(points) == SPARKLINE_POINTS + 1  # the first and 50 evenly spaced, the last among them
    assert points[0] == (0.0, 1.0) and points[-1][0] == 100.0  # highest loss at the top, last step at the right
    assert lines[short.pk] == "0.0,1.0 50.0,12.0 100.0,23.0"


def test_config_diff_shows_keys_a_job_lacks():
    rows = config_diff([{"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "d": True}])
    assert rows == [
        {"key": "b.c", "cells": [{"value": 2, "differs": False}, {"value": 3, "differs": True}]},
        {"key": "d", "cells": [{"value": None, "differs": False}, {"value": True, "differs": True}]},
    ]
