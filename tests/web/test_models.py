"""The Models page: adding a model from the hub (a job that downloads through
huggingface_hub from a hub on 127.0.0.1, run here by the worker's own
run_job) or from a folder under the allowed roots; each team sees shared
models and its own; tokens are team secrets, never shown back."""

import json
import os

import pytest
from django.test import Client

from studio.accounts.models import Membership, TeamSecret
from studio.accounts.services import user_create
from studio.catalog.models import BaseModel
from studio.catalog.services import base_model_register
from studio.jobs.models import Job, JobEvent
from tests.hub_server import HubServer, Repo, model_repo_files
from worker.runner import run_job


@pytest.fixture
def hub(tiny_model, settings):
    server = HubServer(repos={"acme/tiny-llama": Repo(files=model_repo_files(tiny_model)),
                              "acme/gated": Repo(files=model_repo_files(tiny_model), gated_token="hf_secret_token_42")})
    settings.HF_ENDPOINT = server.start()
    yield server
    server.stop()


def add_from_hub(client, repo_id, **fields):
    return client.post("/models/", {"add": "hub", "repo_id": repo_id, **fields})


def test_a_hub_model_is_downloaded_by_a_job_and_listed_with_its_facts(member_client, member, team, hub, media_root):
    response = add_from_hub(member_client, "acme/tiny-llama")
    job = Job.objects.get(kind="model_add")
    assert response.status_code == 302 and response.url == job.get_absolute_url()
    assert not BaseModel.objects.filter(upstream_id="acme/tiny-llama").exists()  # nothing before the download

    assert run_job(job.pk, worker_name="test") == Job.Status.SUCCEEDED
    model = BaseModel.objects.get(upstream_id="acme/tiny-llama")
    assert model.team == team and model.added_by == member and model.revision == hub.repos["acme/tiny-llama"].sha
    assert model.info["family"] == "Llama" and model.info["parameters"] > 0
    assert os.path.isfile(os.path.join(model.ref, "model.safetensors"))
    assert not (media_root / "models" / "downloads" / f"job-{job.pk}").exists()  # the staging folder moved
    progress = [e.data for e in JobEvent.objects.filter(job=job, kind="progress") if e.data["unit"] == "bytes"]
    assert progress[-1]["done"] == progress[-1]["total"] > 6_000_000
    job.refresh_from_db()
    assert job.failure_message.startswith("Added acme/tiny-llama@0123456789ab (Llama,")  # the job's summary

    page = member_client.get("/models/").content.decode()
    assert "acme/tiny-llama@0123456789ab" in page and "Llama" in page
    choices = member_client.get("/jobs/new/").content.decode()
    assert f'value="{model.pk}"' in choices


def test_a_gated_model_needs_a_token_which_is_kept_encrypted_and_never_shown(member_client, member, team, hub):
    add_from_hub(member_client, "acme/gated")
    refused = Job.objects.get(kind="model_add")
    assert run_job(refused.pk, worker_name="test") == Job.Status.FAILED
    refused.refresh_from_db()
    assert refused.failure_kind == "user_error" and "is gated" in refused.failure_message
    assert not BaseModel.objects.filter(upstream_id="acme/gated").exists()

    add_from_hub(member_client, "acme/gated", token="hf_secret_token_42")
    job = Job.objects.filter(kind="model_add").latest("pk")
    secret = TeamSecret.objects.get(team=team)
    assert "hf_secret_token_42" not in secret.ciphertext and secret.hint == "n_42"
    assert job.config["secret_id"] == secret.pk and "hf_secret_token_42" not in json.dumps(job.config)
    assert run_job(job.pk, worker_name="test") == Job.Status.SUCCEEDED
    assert BaseModel.objects.get(upstream_id="acme/gated").gated
    everything_shown = member_client.get("/models/").content.decode() + member_client.get(
        job.get_absolute_url()).content.decode() + json.dumps([e.data for e in JobEvent.objects.filter(job=job)])
    assert "hf_secret_token_42" not in everything_shown and "n_42" in member_client.get("/models/").content.decode()

    # The saved token is offered for the next gated model, by name only.
    add_from_hub(member_client, "acme/gated", revision="main", secret=str(secret.pk))
    assert Job.objects.filter(kind="model_add").latest("pk").config["secret_id"] == secret.pk


@pytest.mark.parametrize("repo_id, field_error", [
    ("../../etc/passwd", "is not a hub repo id"), ("acme/ok", None)])
def test_the_hub_form_names_what_is_wrong(member_client, hub, repo_id, field_error):
    response = add_from_hub(member_client, repo_id, revision="bad revision!" if not field_error else "")
    assert response.status_code == 400
    assert (field_error or "a branch, tag or commit sha") in response.content.decode()
    assert not Job.objects.filter(kind="model_add").exists()


def test_a_missing_revision_fails_the_job_with_the_reason_and_leaves_no_files(member_client, hub, media_root):
    add_from_hub(member_client, "acme/tiny-llama", revision="v9")
    job = Job.objects.get(kind="model_add")
    assert run_job(job.pk, worker_name="test") == Job.Status.FAILED
    job.refresh_from_db()
    assert "has no revision 'v9'" in job.failure_message
    assert not list((media_root / "models").rglob("*.json"))


def test_viewers_cannot_add_models(client, team, hub):
    viewer = user_create(username="vic", password="pw-vic-123", team=team, role=Membership.Role.VIEWER)
    client.force_login(viewer)
    response = add_from_hub(client, "acme/tiny-llama")
    assert response.status_code == 400 and "view-only access" in response.content.decode()
    assert not Job.objects.exists()


def test_a_teams_models_are_its_own(member_client, member, team, outsider, tiny_model):
    theirs = BaseModel.objects.create(name="rival llama", source="local", ref=str(tiny_model) + "-rival",
                                      team=outsider.memberships.get().team)
    shared = base_model_register(name="shared", source="local", ref=str(tiny_model))
    page = member_client.get("/models/").content.decode()
    assert "shared" in page and "rival llama" not in page
    form = member_client.get("/jobs/new/").content.decode()
    assert "rival llama" not in form and "shared" in form
    assert member_client.get(f"/storage/delete/model/{theirs.pk}/").status_code == 404
    assert [model["id"] for model in member_client.get("/api/v1/models").json()["data"]] == [shared.pk]


def _folder(tmp_path, tiny_model, name="my-llama"):
    folder = tmp_path / "roots" / name
    folder.mkdir(parents=True)
    for path in tiny_model.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    return folder


def test_a_folder_under_an_allowed_root_is_checked_by_a_job_and_added(member_client, team, tiny_model, tmp_path,
                                                                      settings):
    folder = _folder(tmp_path, tiny_model)
    settings.MODEL_FOLDER_ROOTS = [str(tmp_path / "roots")]
    response = member_client.post("/models/", {"add": "folder", "path": str(folder)})
    job = Job.objects.get(kind="model_add")
    assert response.status_code == 302 and run_job(job.pk, worker_name="test") == Job.Status.SUCCEEDED
    model = BaseModel.objects.get(ref=str(folder.resolve()))
    assert model.team == team and model.info["family"] == "Llama" and model.origin == str(folder.resolve())


def test_folders_outside_the_roots_or_linking_out_are_refused(member_client, tiny_model, tmp_path, settings):
    folder = _folder(tmp_path, tiny_model)
    outside = _folder(tmp_path / "elsewhere", tiny_model)

    def refusal(path):
        response = member_client.post("/models/", {"add": "folder", "path": str(path)})
        assert response.status_code == 400
        return response.content.decode()

    assert "turned off" in refusal(folder)  # no roots set: no folders at all
    settings.MODEL_FOLDER_ROOTS = [str(tmp_path / "roots")]
    assert "outside the folders" in refusal(outside)
    assert "outside the folders" in refusal(f"{folder}/../../elsewhere/roots/my-llama")
    assert "does not exist" in refusal(tmp_path / "roots" / "nothing")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(outside / "model.safetensors")
    assert "is a link to outside" in refusal(folder)
    assert not Job.objects.exists()


def test_a_downloaded_model_nobody_uses_can_be_deleted_and_its_files_go(member_client, member, hub, settings):
    from studio.storage.services import storage_purge_due

    add_from_hub(member_client, "acme/tiny-llama")
    run_job(Job.objects.get(kind="model_add").pk, worker_name="test")
    model = BaseModel.objects.get(upstream_id="acme/tiny-llama")
    settings.DELETED_RETENTION_HOURS = 0
    assert member_client.post(f"/storage/delete/model/{model.pk}/").status_code == 302  # the member who added it
    storage_purge_due()
    assert not os.path.exists(model.ref) and not BaseModel.everything.filter(pk=model.pk).exists()


def test_staff_delete_a_shared_model_nobody_uses_from_the_models_page(client, member, tiny_model, tiny_base_model):
    staff = user_create(username="root", password="pw-root-123")
    staff.is_staff = True
    staff.save()
    spare = base_model_register(name="spare", source="local", ref=str(tiny_model) + "-copy")
    client.force_login(staff)
    page = client.get("/models/").content.decode()
    assert f"/storage/delete/model/{spare.pk}/" in page
    assert client.post(f"/storage/delete/model/{spare.pk}/").status_code == 302
    assert not BaseModel.objects.filter(pk=spare.pk).exists()
    member_page = Client()
    member_page.force_login(member)
    assert f"/storage/delete/model/{tiny_base_model.pk}/" not in member_page.get("/models/").content.decode()
