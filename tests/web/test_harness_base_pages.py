"""A base model benchmarked on its own (no artifact) from the evaluate form and the API: queued with the
base model as the model to score, run by the worker's own runner, its scores on the job page."""

import pytest

from studio.accounts.services import api_token_create
from studio.jobs.models import Job, JobEvent
from tests.web.test_harness_pages import MAPPING, quiz  # noqa: F401 (a fixture)
from worker.runner import run_job


@pytest.fixture(autouse=True)
def offline_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_the_form_benchmarks_a_base_model_alone_and_the_job_page_shows_it(member_client, quiz,  # noqa: F811
                                                                          tiny_base_model):
    form = member_client.get("/jobs/new/evaluate/").content.decode()
    assert f'<option value="base-{tiny_base_model.pk}"' in form
    plain = member_client.post("/jobs/new/evaluate/", {"artifact": f"base-{tiny_base_model.pk}", "dataset": quiz.pk})
    assert plain.status_code == 400 and "a base model on its own is scored by an lm-evaluation-harness" in \
        plain.content.decode()
    started = member_client.post("/jobs/new/evaluate/", {"artifact": f"base-{tiny_base_model.pk}",
                                                         "dataset": quiz.pk, **MAPPING})
    assert started.status_code == 302
    job = Job.objects.get(kind=Job.Kind.EVALUATE)
    assert job.config["artifact_path"] == "" and job.config["base_model"] == tiny_base_model.ref
    assert job.base_model_id == tiny_base_model.pk and job.input_artifact_ids == []
    assert run_job(job.pk, worker_name="test-worker") == Job.Status.SUCCEEDED
    ended = JobEvent.objects.filter(job=job, kind="status").latest("seq").data
    assert ended["status"] == "succeeded" and "studio_quiz acc" in ended["message"] and "(base model)" in \
        ended["message"]
    page = member_client.get(f"/jobs/{job.pk}/").content.decode()
    table = page[page.index('id="harness-result"'):]
    assert "studio_quiz" in table and "acc_norm" in table


def test_the_api_benchmarks_a_base_model_alone(client, member, quiz, tiny_base_model):  # noqa: F811
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_token_create(user=member, name='script')[1]}"

    def post(**body):
        return client.post("/api/v1/evaluations", {"dataset": quiz.pk, "settings": MAPPING, **body},
                           content_type="application/json")

    neither = post()
    assert neither.status_code == 400 and neither.json()["error"]["field"] == "artifact"
    unknown = post(base_model=999999)
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "base_model"
    no_harness = client.post("/api/v1/evaluations", {"dataset": quiz.pk, "base_model": tiny_base_model.pk},
                             content_type="application/json")
    assert no_harness.status_code == 400 and no_harness.json()["error"]["field"] == "settings.harness"
    queued = post(base_model=tiny_base_model.pk)
    assert queued.status_code == 201, queued.content
    job = Job.objects.get(pk=queued.json()["id"])
    assert job.config["artifact_path"] == "" and job.config["base_model"] == tiny_base_model.ref
