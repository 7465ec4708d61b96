"""Merge searches as jobs: the parent queues each candidate as a merge and an evaluate job on the queue,
reads their scores, keeps the best candidate's model with its recipe and deletes the others'; taken back from
a lost worker it runs no scored candidate again (one search shows both, so the suite runs four candidates
once); bad input is refused by field; another team neither sees nor cancels it, and its cancel cancels the
children. Jobs run through the real claim (worker.runner.run_job), in turn."""

from pathlib import Path

import pytest
from django.test import Client
from django.utils import timezone

from studio.accounts.services import api_token_create
from studio.artifacts.models import Artifact
from studio.artifacts.services import artifact_create
from studio.jobs.models import Job, job_output_dir
from studio.jobs.services import jobs_recover_lost
from studio.jobs.services_queue import job_claim_next
from studio.jobs.services_search import (job_create_merge_search, merge_search_submit, merge_search_sync,
                                         merge_search_unfinished_children)
from tests.core.test_merge_search import perturbed_copy
from tests.web.test_steps import dataset  # noqa: F401 (a fixture: four instruction/output rows)
from tuning.merge_search import MergeSearchConfig, propose
from worker.runner import run_job

SEARCH = {"weight.0": [0.0, 1.0], "weight.1": [0.0, 1.0]}
EVALUATE = {"task": "sft", "max_rows": 4, "generate_rows": 0}


@pytest.fixture
def sources(member, team, tiny_base_model, tiny_model, media_root) -> list[Artifact]:
    """Two fine-tunes of the tiny model, one close to it and one far, as the team's model artifacts."""
    made = []
    for name, scale in (("near", 0.01), ("far", 0.5)):
        job = Job.objects.create(team=team, owner=member, kind="train", status="succeeded", config={},
                                 base_model=tiny_base_model, name=f"tune {name}")
        path = perturbed_copy(tiny_model, job_output_dir(job.pk) / "model", scale=scale, seed=len(made) + 1)
        made.append(artifact_create(job=job, kind="model", path=str(path), metadata={}))
    return made


def start(member, team, sources, scored_on):
    return job_create_merge_search(user=member, team=team, artifacts=sources, method="task_arithmetic",
                                   search=SEARCH, method_params={}, dataset=scored_on, metric="eval_loss",
                                   evaluate=EVALUATE, budget=4, population=2, seed=3)


def work(pool: str, *, until=lambda: False, limit: int = 40) -> None:
    """What the pool's worker does: claim and run the next job, until none may start (or ``until()``)."""
    for _ in range(limit):
        if until() or run_job(0, worker_name="test-worker", pool=pool) == "skipped":
            return
    raise AssertionError(f"the pool still had work after {limit} jobs")


def candidate_events(search: Job) -> list[dict]:
    return [e.data for e in search.events.filter(kind="candidate").order_by("seq")]


def test_a_search_runs_candidates_as_child_jobs_goes_on_after_a_lost_worker_and_keeps_the_best(
        member_client, member, team, sources, dataset, settings):  # noqa: F811 (the imported fixture)
    """Budget 4, population 2. After the first generation is scored the search's next step starts, reads the
    scores and queues the second generation; then its worker dies. Taken back, it runs nothing again."""
    search = start(member, team, sources, dataset)

    def first_generation_scored() -> bool:
        job = Job.objects.get(pk=search.pk)
        return job.status == "queued" and job.depends_on_id is None and job.search_candidates.count() == 2 and \
            not Job.objects.filter(kind__in=["merge", "evaluate"]).exclude(status="succeeded").exists()

    work(search.device_pool, until=first_generation_scored)
    claimed = job_claim_next(pool=search.device_pool, worker_name="doomed@box")
    assert claimed.pk == search.pk
    config = MergeSearchConfig.from_dict(claimed.config)
    merge_search_sync(search=claimed, metric=config.metric)
    first = [c.score for c in claimed.search_candidates.all()]
    merge_search_submit(search=claimed, generation=1, proposals=propose(config, [first]))
    long_ago = timezone.now() - timezone.timedelta(seconds=settings.JOB_LOST_AFTER_S + 60)
    Job.objects.filter(pk=search.pk).update(heartbeat_at=long_ago)
    assert jobs_recover_lost() == [search.pk]

    work(search.device_pool)
    search.refresh_from_db()
    assert search.status == "succeeded", search.failure_message
    candidates = list(search.search_candidates.select_related("merge_job", "evaluate_job"))
    assert [(c.index, c.generation) for c in candidates] == [(0, 0), (1, 0), (2, 1), (3, 1)]
    assert Job.objects.filter(kind="merge").count() == Job.objects.filter(kind="evaluate").count() == 4
    for candidate in candidates:  # each candidate: one merge and one evaluation on the queue, each run once
        for child in (candidate.merge_job, candidate.evaluate_job):
            assert child.status == "succeeded" and child.attempts == 1 and child.team_id == team.pk
        assert candidate.evaluate_job.depends_on_id == candidate.merge_job_id
        assert candidate.recipe["weights"] == [candidate.coefficients["weight.0"], candidate.coefficients["weight.1"]]
    assert [c.score for c in candidates[:2]] == first  # scored once, before the worker was lost
    assert [c.coefficients for c in candidates[2:]] == propose(config, [first])  # what it would have proposed

    scores = [c.score for c in candidates]
    best = scores.index(min(scores))  # eval_loss: lower is better
    kept = Artifact.objects.get(job=candidates[best].merge_job)
    assert kept.metadata["search"]["recipe"] == candidates[best].recipe and Path(kept.path).is_dir()
    for candidate in candidates[:best] + candidates[best + 1:]:  # the others' weights are gone, their rows stay
        assert candidate.weights_deleted and not Artifact.everything.filter(job=candidate.merge_job).exists()
        assert not (job_output_dir(candidate.merge_job_id) / "model").exists()

    events = candidate_events(search)
    assert [e["index"] for e in events] == [0, 1, 2, 3]  # the best-so-far curve: each candidate once, in order
    assert [e["best_score"] for e in events] == [min(scores[:i + 1]) for i in range(4)]
    page = member_client.get(f"/jobs/{search.pk}/").content.decode()
    assert f"Best: candidate {best}" in page and f'href="/artifacts/{kept.pk}/"' in page
    assert 'id="search-chart"' in page and page.count("<tr data-index=") == 4
    assert "Recipe: task_arithmetic, weights" in page
    assert f"candidate {best}" in search.failure_message  # the job's summary line names the best
    # the owner hears of the search once, not of each of its eight child jobs
    assert member.notifications.filter(job=search).count() == 1
    assert not member.notifications.filter(job__kind__in=["merge", "evaluate"]).exists()


def test_bad_input_is_refused_naming_the_field(member_client, member, sources, dataset):  # noqa: F811
    one = {"artifacts": [sources[0].pk], "dataset": dataset.pk, "method": "task_arithmetic",
           f"weight_low_{sources[0].pk}": "0", f"weight_high_{sources[0].pk}": "1", "budget": "4", "population": "2"}
    response = member_client.post("/jobs/new/merge-search/", one)
    assert response.status_code == 400 and "sources" in response.content.decode()
    half = {**one, "artifacts": [s.pk for s in sources], f"weight_high_{sources[0].pk}": ""}
    response = member_client.post("/jobs/new/merge-search/", half)
    assert response.status_code == 400 and "search.weight.0" in response.content.decode()
    assert 'href="/jobs/new/merge-search/' in member_client.get("/jobs/new/merge/").content.decode()  # linked

    api = Client()
    api.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_token_create(user=member, name='script')[1]}"
    body = {"artifacts": [s.pk for s in sources], "dataset": dataset.pk, "search": SEARCH, "evaluate": EVALUATE,
            "budget": 4, "population": 2}
    for change, field in (({"metric": "accuracy"}, "metric"), ({"search": {"weight.9": [0, 1]}}, "search.weight.9"),
                          ({"population": 8}, "population"), ({"artifacts": [sources[0].pk]}, "artifacts")):
        response = api.post("/api/v1/merge-searches", {**body, **change}, content_type="application/json")
        assert response.status_code == 400 and response.json()["error"]["field"] == field, response.content
    assert not Job.objects.filter(kind="merge_search").exists()
    response = api.post("/api/v1/merge-searches", body, content_type="application/json")
    assert response.status_code == 201 and response.json()["kind"] == "merge_search", response.content


def test_another_team_cannot_see_or_cancel_a_search_and_its_cancel_cancels_the_children(
        member_client, member, team, outsider, sources, dataset):  # noqa: F811 (the imported fixture)
    search = start(member, team, sources, dataset)
    assert run_job(search.pk, worker_name="test-worker", pool=search.device_pool) == "queued"  # parked
    children = merge_search_unfinished_children(search=search)
    assert sorted(j.kind for j in children) == ["evaluate", "evaluate", "merge", "merge"]

    rival = Client()
    rival.force_login(outsider)
    assert rival.get(f"/jobs/{search.pk}/").status_code == 404
    assert rival.post(f"/jobs/{search.pk}/cancel/").status_code == 404
    rival_api = Client()
    rival_api.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_token_create(user=outsider, name='rival')[1]}"
    assert rival_api.get(f"/api/v1/merge-searches/{search.pk}").status_code == 404
    assert rival_api.post(f"/api/v1/fine_tuning/jobs/{search.pk}/cancel").status_code == 404
    assert Job.objects.get(pk=search.pk).status == "queued"

    mine = Client()
    mine.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_token_create(user=member, name='script')[1]}"
    shown = mine.get(f"/api/v1/merge-searches/{search.pk}").json()
    assert [c["index"] for c in shown["candidates"]] == [0, 1] and shown["best"] is None

    member_client.post(f"/jobs/{search.pk}/cancel/")
    assert Job.objects.get(pk=search.pk).status == "cancelled"
    assert search.events.order_by("-seq").first().data["message"] == "Cancelled while waiting in the queue"
    assert set(Job.objects.filter(pk__in=[j.pk for j in children]).values_list("status", flat=True)) == {"cancelled"}
