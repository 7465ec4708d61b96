"""Publishing an artifact to the Hub from its page and the API: a publish job
(run here by the worker's own run_job) that commits to a hub on 127.0.0.1
through huggingface_hub; the page shows where, when and which commit; the
token stays a team secret; refusals name what is wrong, before a job where
the studio can tell, before any upload where the hub must; a failed publish
is tried again with one click; every publish is in the audit log."""

import json
from pathlib import Path

import pytest

from studio.accounts.models import Membership
from studio.accounts.services import api_token_create, user_create
from studio.artifacts.models import Publication
from studio.artifacts.services import artifact_create
from studio.audit.models import AuditEntry
from studio.datasets.services import dataset_create_from_file
from studio.jobs.models import Job, JobEvent
from studio.jobs.services import job_create_train, job_finish
from studio.storage.selectors import removal_plan
from tests.hub_server import HubServer
from tuning.hub_card import split_front_matter
from worker.runner import run_job

WEIGHTS = bytes(range(256)) * 4096  # 1 MiB, sent as a large file


@pytest.fixture
def hub(settings):
    server = HubServer()
    settings.HF_ENDPOINT = server.start()
    server.add_user("hf_alice_write_token", "alice", orgs={"acme": "write"})
    server.add_user("hf_alice_read_token", "alice", role="read")
    yield server
    server.stop()


@pytest.fixture
def artifact(member, team, tiny_base_model, tmp_path, settings):
    tiny_base_model.upstream_id = "acme/tiny-llama"
    tiny_base_model.info = {"license": "apache-2.0"}
    tiny_base_model.save()
    data = tmp_path / "chats.csv"
    data.write_text("instruction,output\nq,a\n")
    dataset = dataset_create_from_file(team=team, user=member, source_path=data, filename="chats.csv")
    job = job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                           settings_values={"max_steps": 1}, method_params={}, name="support bot")
    job_finish(job_id=job.pk, status=Job.Status.SUCCEEDED)  # as if trained: the publish jobs are next in the pool
    adapter = settings.MEDIA_ROOT / "jobs" / str(job.pk) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/srv/tiny", "r": 4}))
    (adapter / "adapter_model.safetensors").write_bytes(WEIGHTS)
    (adapter / "README.md").write_text("---\nbase_model: /srv/tiny\n---\n# LoRA adapter\n\nLoad "
                                       '"path/to/this/folder".\n')
    return artifact_create(job=job, kind="adapter", path=str(adapter), metadata={"method": "lora"})


def publish(client, artifact, **fields):
    return client.post(f"/artifacts/{artifact.pk}/publish/", {"repo_id": "alice/support-bot", "private": "on",
                                                             "branch": "main", **fields})


def test_publishing_from_the_page_commits_the_adapter_and_the_page_shows_where_when_and_which_commit(
        member_client, member, team, artifact, hub):
    response = publish(member_client, artifact, token="hf_alice_write_token", commit_message="First version")
    job = Job.objects.get(kind="publish")
    assert response.status_code == 302 and response.url == artifact.get_absolute_url()
    assert "hf_alice_write_token" not in json.dumps(job.config) and job.config["secret_id"]
    assert job.config["card"]["base_model"] == "acme/tiny-llama" and job.config["card"]["relation"] == "adapter"

    assert run_job(job.pk, worker_name="test") == Job.Status.SUCCEEDED
    repo = hub.repos["alice/support-bot"]
    assert repo.private and repo.commits[-1]["summary"] == "First version"
    assert repo.files["adapter_model.safetensors"] == WEIGHTS
    assert json.loads(repo.files["adapter_config.json"])["base_model_name_or_path"] == "acme/tiny-llama"
    meta, body = split_front_matter(repo.files["README.md"].decode())
    assert meta["base_model"] == "acme/tiny-llama" and meta["license"] == "apache-2.0"
    assert '"alice/support-bot"' in body and "- chats (sha256 `" in body and "support bot (lora): adapter" in body
    progress = [e.data for e in JobEvent.objects.filter(job=job, kind="progress") if e.data["unit"] == "bytes"]
    assert progress[-1]["done"] == progress[-1]["total"] > len(WEIGHTS)

    publication = Publication.objects.get(artifact=artifact)
    assert publication.commit_sha == repo.sha and publication.published_by == member
    page = member_client.get(artifact.get_absolute_url()).content.decode()
    assert "alice/support-bot" in page and repo.sha[:12] in page and publication.commit_url in page
    job_page = member_client.get(job.get_absolute_url()).content.decode()
    assert "hf_alice_write_token" not in page + job_page and "Published to alice/support-bot (main)" in job_page
    audit = {entry.action: entry for entry in AuditEntry.objects.filter(team=team)}
    assert audit["job.started"].detail["repo_id"] == "alice/support-bot"
    assert audit["artifact.published"].detail["commit"] == repo.sha and audit["artifact.published"].user == member

    # A re-publish of a changed card, with the saved token, is a new commit to the same repo (a new branch here).
    (Path(artifact.path) / "README.md").write_text("# LoRA adapter, with a better card\n")
    publish(member_client, artifact, secret=str(job.config["secret_id"]), branch="v2")
    again = Job.objects.filter(kind="publish").latest("pk")
    assert run_job(again.pk, worker_name="test") == Job.Status.SUCCEEDED
    assert repo.refs["v2"][0] == Publication.objects.get(job=again).commit_sha != repo.sha
    assert AuditEntry.objects.filter(action="artifact.published").count() == 2


@pytest.mark.parametrize("fields, licence, expected", [
    ({}, "", "needs a hub access token"),
    ({"repo_id": "../etc", "token": "t"}, "", "is not a hub repo id"),
    ({"branch": "a b", "token": "t"}, "", "a branch name"),
    ({"token": "t"}, "cc-by-nc-nd-4.0", "allows no derivative works"),
])
def test_what_the_studio_can_tell_is_refused_before_a_job(member_client, artifact, hub, fields, licence, expected):
    if licence:
        artifact.base_model.info = {"license": licence}
        artifact.base_model.save()
    response = publish(member_client, artifact, **fields)
    assert response.status_code == 400 and expected in response.content.decode()
    assert not Job.objects.filter(kind="publish").exists() and not hub.requests


def test_a_gated_base_models_weights_go_to_a_private_repo_only(member_client, artifact, hub):
    artifact.kind = "model"
    artifact.save()
    artifact.base_model.gated = True
    artifact.base_model.save()
    response = publish(member_client, artifact, token="t", private="")
    assert response.status_code == 400 and "the base model is gated" in response.content.decode()
    assert publish(member_client, artifact, token="t").status_code == 302


def test_what_the_hub_refuses_fails_the_job_before_any_upload_and_a_retry_is_one_click(
        member_client, artifact, hub):
    publish(member_client, artifact, token="hf_alice_read_token")
    job = Job.objects.get(kind="publish")
    assert run_job(job.pk, worker_name="test") == Job.Status.FAILED
    job.refresh_from_db()
    assert job.failure_kind == "user_error" and "is read-only" in job.failure_message
    assert not [path for method, path, _ in hub.requests if method in ("POST", "PUT")]
    section = member_client.get(f"/artifacts/{artifact.pk}/publish/").content.decode()
    assert "is read-only" in section and f"/publish/{job.pk}/again/" in section

    response = member_client.post(f"/artifacts/{artifact.pk}/publish/{job.pk}/again/", HTTP_HX_REQUEST="true")
    retry = Job.objects.filter(kind="publish").latest("pk")
    assert response.status_code == 200 and retry.pk != job.pk and f'data-job="{retry.pk}"' in response.content.decode()
    assert retry.config["secret_id"] == job.config["secret_id"] and retry.config["repo_id"] == "alice/support-bot"


def test_viewers_cannot_publish(client, team, artifact, hub):
    viewer = user_create(username="vic", password="pw-vic-123", team=team, role=Membership.Role.VIEWER)
    client.force_login(viewer)
    assert "Publish…" not in client.get(artifact.get_absolute_url()).content.decode()
    response = publish(client, artifact, token="hf_alice_write_token")
    assert response.status_code == 400 and "cannot publish artifacts" in response.content.decode()
    raw = api_token_create(user=viewer, name="v")[1]
    api = client.post(f"/api/v1/artifacts/{artifact.pk}/publish", {"repo_id": "alice/x", "token": "t"},
                      content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.status_code == 403 and not Job.objects.filter(kind="publish").exists()


def test_the_api_publishes_and_lists_the_publications(client, member, artifact, hub):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {api_token_create(user=member, name='script')[1]}"}
    url = f"/api/v1/artifacts/{artifact.pk}/publish"
    bad = client.post(url, {"repo_id": "alice/x", "tokn": "t"}, content_type="application/json", **headers)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "tokn"
    made = client.post(url, {"repo_id": "acme/support-bot", "token": "hf_alice_write_token", "private": False},
                       content_type="application/json", **headers)
    assert made.status_code == 201 and made.json()["kind"] == "publish"
    assert run_job(made.json()["id"], worker_name="test") == Job.Status.SUCCEEDED
    listed = client.get(f"/api/v1/artifacts/{artifact.pk}", **headers).json()["publications"]
    assert [(p["repo_id"], p["branch"], p["commit"]) for p in listed] == [
        ("acme/support-bot", "main", hub.repos["acme/support-bot"].sha)]
    assert not hub.repos["acme/support-bot"].private
    # Publishing made nothing from the artifact: it can still be deleted on its own.
    assert removal_plan(artifact).dependents == []
