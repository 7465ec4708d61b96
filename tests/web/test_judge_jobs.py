"""Judged comparisons and forgetting checks from the browser's side and the API: the form and its refusals
(the judge URL through the outbound guard, named by field), the job run in-process by the worker's own
runner against a fake OpenAI-compatible judge over real HTTP on 127.0.0.1 (allowed by settings here only),
the result page with its JSON and CSV exports, the artifact page, and the forgetting check chained after
training."""

import csv
import io
import json
import shutil

import pytest

from studio.accounts.models import TeamSecret
from studio.accounts.services import api_token_create
from studio.artifacts.services import artifact_create
from studio.jobs.models import Job
from tests.core.test_judge import damaged_copy
from tests.judge_server import JudgeServer
from tests.web.test_steps import dataset, finish_with_a_real_adapter, train  # noqa: F401 (dataset: a fixture)
from worker.runner import run_job


def made_by_a_finished_run(member, team, dataset, base_model):  # noqa: F811
    """A training job marked finished, so that the runner does not claim it before the job under test."""
    job = train(member, team, dataset, base_model)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.SUCCEEDED)
    return job


@pytest.fixture
def tuned(member, team, dataset, tiny_base_model, tiny_model, media_root):  # noqa: F811 (the imported fixture)
    """A "merged" model of the team: the tiny model with its weights moved, as a tune would move them."""
    job = made_by_a_finished_run(member, team, dataset, tiny_base_model)
    return artifact_create(job=job, kind="merged", path=str(damaged_copy(tiny_model, media_root / "tuned", noise=0.3)),
                           metadata={})


@pytest.fixture
def unchanged(member, team, dataset, tiny_base_model, tiny_model, media_root):  # noqa: F811
    """A "merged" model whose weights are the base model's own."""
    job = made_by_a_finished_run(member, team, dataset, tiny_base_model)
    shutil.copytree(tiny_model, media_root / "unchanged")
    return artifact_create(job=job, kind="merged", path=str(media_root / "unchanged"), metadata={})


def judge_form(model_b, **extra) -> dict:
    return {"model_b": model_b.pk, "model_a": "base", "prompts_from": "typed", "prompts": "Say hi.\nName a colour.",
            "judge_kind": "endpoint", "judge_url": "http://127.0.0.1:9/v1", "judge_model": "fake-judge",
            "max_new_tokens": "4", **extra}


def test_a_judge_on_a_private_address_is_refused_naming_the_field(member_client, tuned, settings):
    settings.JUDGE_ALLOWED_HOSTS = []
    page = member_client.get(f"/jobs/new/judge/?b={tuned.pk}")
    assert page.status_code == 200 and 'name="judge_url"' in page.content.decode()
    for url, said in (("http://127.0.0.1:9/v1", "127.0.0.1 is not a public address"),
                      ("http://localhost/v1", "localhost is this machine"),
                      ("http://10.0.0.5/v1", "10.0.0.5 is not a public address"),
                      ("ftp://judge.example/v1", "must start with http:// or https://")):
        response = member_client.post("/jobs/new/judge/", judge_form(tuned, judge_url=url))
        text = response.content.decode()
        assert response.status_code == 400 and "<strong>judge_url:</strong>" in text and said in text, url
    missing = member_client.post("/jobs/new/judge/", judge_form(tuned, judge_model="", prompts=""))
    text = missing.content.decode()
    assert missing.status_code == 400 and "<strong>prompts:</strong>" in text
    assert not Job.objects.filter(kind="judge").exists() and not TeamSecret.objects.exists()


def test_a_judged_comparison_runs_and_its_pairs_are_shown_and_exported(member_client, member, tuned, settings,
                                                                         outsider):
    settings.JUDGE_ALLOWED_HOSTS = ["127.0.0.1"]  # this test's fake judge only
    with JudgeServer(policy="always_a") as server:
        response = member_client.post("/jobs/new/judge/", judge_form(tuned, judge_url=server.url,
                                                                     judge_api_key="sk-web-key"))
        assert response.status_code == 302, response.content.decode()[:2000]
        job = Job.objects.get(kind="judge")
        assert "sk-web-key" not in json.dumps(job.config)  # the key is a team secret, the job names it
        assert TeamSecret.objects.get(pk=job.config["studio"]["secret_id"]).team_id == job.team_id
        assert run_job(job.pk, worker_name="test-worker") == Job.Status.SUCCEEDED, \
            Job.objects.get(pk=job.pk).failure_message
    assert len(server.requests) == 4 and {r["authorization"] for r in server.requests} == {"Bearer sk-web-key"}

    page = member_client.get(f"/jobs/{job.pk}/judged/").content.decode()
    assert "Every judged pair" in page and "Say hi." in page and "95% Wilson score interval" in page
    exported = member_client.get(f"/jobs/{job.pk}/judged/?format=json").json()
    assert exported["summary"]["ties"] == 2 and exported["summary"]["wins"] == 0  # position bias cancelled
    assert [p["prompt"] for p in exported["pairs"]] == ["Say hi.", "Name a colour."]
    rows = list(csv.reader(io.StringIO(member_client.get(f"/jobs/{job.pk}/judged/?format=csv").content.decode())))
    assert rows[0][:3] == ["prompt", "answer_a", "answer_b"] and [r[5] for r in rows[1:]] == ["tie", "tie"]
    artifact_page = member_client.get(f"/artifacts/{tuned.pk}/").content.decode()
    assert f"/jobs/{job.pk}/judged/" in artifact_page and "Compare with a judge" in artifact_page
    assert f"/jobs/{job.pk}/judged/" in member_client.get(f"/jobs/{job.pk}/").content.decode()

    from django.test import Client

    rival = Client()
    rival.force_login(outsider)
    for url in (f"/jobs/{job.pk}/judged/", f"/jobs/{job.pk}/judged/?format=json", f"/jobs/{job.pk}/judged/?format=csv"):
        assert rival.get(url).status_code == 404, url


def test_the_worker_refuses_a_judge_address_the_allow_list_no_longer_allows(member_client, tuned, settings):
    settings.JUDGE_ALLOWED_HOSTS = ["127.0.0.1"]
    with JudgeServer() as server:
        assert member_client.post("/jobs/new/judge/", judge_form(tuned, judge_url=server.url)).status_code == 302
        settings.JUDGE_ALLOWED_HOSTS = []  # an admin took it back before the job ran
        job = Job.objects.get(kind="judge")
        assert run_job(job.pk, worker_name="test-worker") == Job.Status.FAILED
    job.refresh_from_db()
    assert job.failure_kind == "user_error" and "refused before connecting" in job.failure_message
    assert server.requests == []  # not one connection


def test_the_forgetting_warning_shows_for_a_damaged_model_and_not_for_an_unchanged_one(member_client, tuned,
                                                                                        unchanged):
    for artifact in (tuned, unchanged):
        response = member_client.post("/jobs/new/forgetting/", {"artifact": artifact.pk, "threshold_pct": "10"})
        assert response.status_code == 302
        job = Job.objects.filter(kind="forgetting").latest("pk")
        assert run_job(job.pk, worker_name="test-worker") == Job.Status.SUCCEEDED
    damaged_page = member_client.get(f"/artifacts/{tuned.pk}/").content.decode()
    assert "Possible forgetting" in damaged_page
    same_page = member_client.get(f"/artifacts/{unchanged.pk}/").content.decode()
    assert "Possible forgetting" not in same_page and "within the 10% threshold" in same_page
    refused = member_client.post("/jobs/new/forgetting/", {"artifact": tuned.pk, "threshold_pct": "-5"})
    assert refused.status_code == 400 and "<strong>threshold_pct:</strong>" in refused.content.decode()


def test_a_training_job_with_the_setting_chains_a_forgetting_check_on_its_output(member, team, dataset,  # noqa: F811
                                                                                 tiny_base_model):
    from studio.jobs.services import job_create_train

    job = job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                           settings_values={"max_steps": 2, "batch_size": 2, "precision": "fp32",
                                            "forgetting_threshold_pct": 5}, method_params={"rank": 4})
    check = Job.objects.get(kind="forgetting", depends_on=job)
    assert check.config["threshold_pct"] == 5 and check.config["artifact_path"].startswith("(the output of job")
    adapter = finish_with_a_real_adapter(job)
    check.refresh_from_db()
    assert check.status == Job.Status.QUEUED and check.config["artifact_path"] == adapter.path
    assert check.input_artifact_ids == [adapter.pk]


def test_the_api_starts_both_and_names_the_refused_field(client, member, tuned, settings):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_token_create(user=member, name='script')[1]}"
    settings.JUDGE_ALLOWED_HOSTS = []
    body = {"model_b": tuned.pk, "prompts": ["Say hi."], "judge": {"url": "http://127.0.0.1:9/v1", "model": "j"}}
    refused = client.post("/api/v1/judged-comparisons", body, content_type="application/json")
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "judge.url"
    assert "127.0.0.1 is not a public address" in refused.json()["error"]["message"]
    unknown = client.post("/api/v1/judged-comparisons", {**body, "judge": {"adress": "x"}},
                          content_type="application/json")
    assert unknown.status_code == 400 and unknown.json()["error"]["field"] == "judge.adress"
    settings.JUDGE_ALLOWED_HOSTS = ["127.0.0.1"]
    started = client.post("/api/v1/judged-comparisons", body, content_type="application/json")
    assert started.status_code == 201, started.content
    assert "/" not in str({k: v for k, v in started.json()["hyperparameters"].items() if k != "judge_url"})
    shown = client.get(f"/api/v1/judged-comparisons/{started.json()['id']}").json()
    assert shown["object"] == "judged_comparison" and shown["result"] is None
    check = client.post("/api/v1/forgetting-checks", {"artifact": tuned.pk, "threshold_pct": 20},
                        content_type="application/json")
    assert check.status_code == 201 and Job.objects.get(pk=check.json()["id"]).config["threshold_pct"] == 20
