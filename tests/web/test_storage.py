"""Deleting, restoring and purging (studio.storage), the Storage page and the
storage quota. Jobs here are finished by hand with real files in their
directories (no worker): what is under test is what a delete removes, when
its files go, and who may do it."""

import io
import zipfile
from datetime import timedelta

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from studio.accounts.models import Membership
from studio.accounts.services import api_token_create, user_create
from studio.artifacts.models import Artifact
from studio.artifacts.services import artifact_create
from studio.audit.models import AuditEntry
from studio.catalog.models import BaseModel
from studio.datasets.models import Dataset
from studio.datasets.services_work import dataset_analysis_request
from studio.jobs.models import Job, TeamQuota, job_output_dir
from studio.jobs.services import job_finish
from studio.jobs.state import job_create
from studio.storage.models import Deletion
from studio.storage.selectors import team_storage_usage
from studio.storage.services import StorageRefusal, storage_delete, storage_purge_due, storage_restore
from tests.web.test_steps import dataset, train  # noqa: F401 (dataset is a fixture: four instruction rows)
from tuning.errors import ConfigError


def finished_with_files(job: Job, *, artifact_kind: str = "adapter", size: int = 3000) -> Artifact:
    """What a worker leaves: a checkpoint and an artifact directory with files, then the job's end."""
    out = job_output_dir(job.pk)
    (out / "checkpoints" / "step-2").mkdir(parents=True)
    (out / "checkpoints" / "step-2" / "state.safetensors").write_bytes(b"c" * size)
    (out / artifact_kind).mkdir()
    (out / artifact_kind / "adapter_model.safetensors").write_bytes(b"w" * size)
    (out / artifact_kind / "README.md").write_text("# card\n")
    (out / artifact_kind / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    artifact = artifact_create(job=job, kind=artifact_kind, path=str(out / artifact_kind), metadata={})
    job_finish(job_id=job.pk, status=Job.Status.SUCCEEDED, message="done")
    return artifact


@pytest.fixture
def chain(member, team, dataset, tiny_base_model):
    """dataset → training job → adapter → merge job → merged model."""
    training = train(member, team, dataset, tiny_base_model)
    adapter = finished_with_files(training)
    merge = job_create(kind="merge", team=team, owner=member, config={}, input_artifacts=[adapter])
    merged = finished_with_files(merge, artifact_kind="model")
    return {"dataset": dataset, "training": training, "adapter": adapter, "merge": merge, "merged": merged}


def test_a_job_records_the_size_of_its_directory_when_it_ends(chain):
    training = Job.objects.get(pk=chain["training"].pk)
    assert training.disk_bytes == 2 * 3000 + len("# card\n") + len('{"peft_type": "LORA"}')


def test_a_dataset_others_depend_on_is_refused_with_the_list_until_the_chain_is_chosen(member_client, chain):
    dataset = chain["dataset"]
    page = member_client.get(f"/storage/delete/dataset/{dataset.pk}/").content.decode()
    for dependent in ("training", "merge"):  # the jobs, with their artifacts, that stem from the data
        assert f"job #{chain[dependent].pk}" in page
    assert chain["adapter"].name in page and "Delete it and the 4 that depend on it" in page

    refused = member_client.post(f"/storage/delete/dataset/{dataset.pk}/")
    assert refused.status_code == 409
    assert f"job #{chain['training'].pk}" in refused.content.decode()
    assert Dataset.objects.filter(pk=dataset.pk).exists()

    done = member_client.post(f"/storage/delete/dataset/{dataset.pk}/", {"chain": "1"})
    assert done.status_code == 302 and done.url.startswith("/storage/?deleted=")
    for key, model in (("dataset", Dataset), ("training", Job), ("merge", Job), ("adapter", Artifact),
                       ("merged", Artifact)):
        assert not model.objects.filter(pk=chain[key].pk).exists(), key  # gone from every list …
        assert model.everything.get(pk=chain[key].pk).deletion_id is not None  # … but restorable
    assert member_client.get(f"/jobs/{chain['training'].pk}/").status_code == 404
    assert member_client.get(f"/artifacts/{chain['merged'].pk}/download/").status_code == 404
    assert f"/datasets/{dataset.pk}/" not in member_client.get("/datasets/").content.decode()
    assert job_output_dir(chain["training"].pk).is_dir()  # the files wait for the retention window

    entry = AuditEntry.objects.get(action="dataset.deleted")
    assert entry.target_id == str(dataset.pk) and len(entry.detail["with"]) == 4


def test_a_restore_brings_back_everything_one_delete_removed(member_client, member, chain):
    deletion = storage_delete(user=member, target=chain["adapter"].job, chain=True)
    assert not Job.objects.filter(pk=chain["merge"].pk).exists()
    page = member_client.get("/storage/").content.decode()
    assert f'id="deletion-{deletion.pk}"' in page and "Restore" in page

    response = member_client.post(f"/storage/deletions/{deletion.pk}/restore/")
    assert response.status_code == 302
    for key in ("training", "merge"):
        assert Job.objects.get(pk=chain[key].pk).deletion_id is None
    assert Artifact.objects.filter(pk__in=[chain["adapter"].pk, chain["merged"].pk]).count() == 2
    assert AuditEntry.objects.filter(action="storage.restored").count() == 1
    with pytest.raises(StorageRefusal):
        storage_restore(user=member, deletion_id=deletion.pk)  # once only


def test_the_purge_removes_files_and_rows_once_the_retention_window_has_passed(member, chain, settings):
    dataset_file = chain["dataset"].file.path
    deletion = storage_delete(user=member, target=chain["dataset"], chain=True)
    assert storage_purge_due() == []  # inside the window (a week by default): nothing goes
    assert storage_purge_due(now=timezone.now() + timedelta(hours=settings.DELETED_RETENTION_HOURS + 1)) == [
        deletion.pk]
    for key in ("training", "merge"):
        assert not job_output_dir(chain[key].pk).exists()
        assert not Job.everything.filter(pk=chain[key].pk).exists()
    assert not Dataset.everything.filter(pk=chain["dataset"].pk).exists()
    assert not Artifact.everything.exists()
    import os
    assert not os.path.exists(dataset_file)
    deletion.refresh_from_db()
    assert deletion.purged_at and not deletion.purge_blocked
    assert AuditEntry.objects.get(action="storage.purged").detail["bytes_freed"] > 4 * 3000
    assert storage_purge_due(now=timezone.now() + timedelta(days=30)) == []  # purged once


def test_an_artifact_alone_leaves_its_job_and_checkpoints(member, chain, settings):
    settings.DELETED_RETENTION_HOURS = 0
    adapter = chain["adapter"]
    with pytest.raises(StorageRefusal) as refusal:  # the merge read it
        storage_delete(user=member, target=adapter)
    assert f"job #{chain['merge'].pk}" in " ".join(refusal.value.items)
    storage_delete(user=member, target=chain["merged"])  # nothing depends on the merged model
    storage_purge_due()
    merge_dir = job_output_dir(chain["merge"].pk)
    assert not (merge_dir / "model").exists() and (merge_dir / "checkpoints").is_dir()
    assert Job.objects.filter(pk=chain["merge"].pk).exists()


def test_jobs_that_have_not_ended_cannot_be_deleted(member, team, dataset, tiny_base_model):
    queued = train(member, team, dataset, tiny_base_model)
    with pytest.raises(StorageRefusal) as refusal:
        storage_delete(user=member, target=dataset, chain=True)
    assert "cancel them first" in refusal.value.message and f"job #{queued.pk}" in refusal.value.items[0]
    with pytest.raises(StorageRefusal):
        storage_delete(user=member, target=queued)
    assert not Deletion.objects.exists()


def test_a_versions_own_analyses_go_with_it_without_asking(member, team, dataset, tiny_base_model):
    analysis = dataset_analysis_request(dataset=dataset, user=member, base_model=tiny_base_model, max_length=64,
                                        loss_on_prompt=False)
    job_finish(job_id=analysis.job_id, status=Job.Status.SUCCEEDED, message="")
    deletion = storage_delete(user=member, target=dataset)
    assert [item["type"] for item in deletion.items] == ["datasets.dataset", "jobs.job"]


def test_who_may_delete_follows_the_one_rule(member, team, chain, outsider):
    teammate = user_create(username="tim", password="pw-tim-123", team=team)
    viewer = user_create(username="vic", password="pw-vic-123", team=team, role=Membership.Role.VIEWER)
    admin = user_create(username="ada", password="pw-ada-123", team=team, role=Membership.Role.ADMIN)
    merged = chain["merged"]
    for user, status in ((viewer, 403), (teammate, 403), (outsider, 404)):
        client = Client()
        client.force_login(user)
        page = client.get(f"/storage/delete/artifact/{merged.pk}/")
        assert page.status_code == status, user
        assert client.post(f"/storage/delete/artifact/{merged.pk}/").status_code == status, user
        if status == 403:
            assert "Members can delete only what they made" in page.content.decode()
        api = Client(HTTP_AUTHORIZATION="Bearer " + api_token_create(user=user, name="t")[1])
        assert api.delete(f"/api/v1/artifacts/{merged.pk}").status_code == status, user
    assert Artifact.objects.filter(pk=merged.pk).exists()

    # A teammate's chain: the admin may remove it, a member only what they made.
    with pytest.raises(StorageRefusal) as refusal:
        storage_delete(user=teammate, target=chain["dataset"], chain=True)
    assert refusal.value.status == 403
    storage_delete(user=admin, target=chain["dataset"], chain=True)
    assert not Job.objects.filter(team=team).exists()


def test_the_api_deletes_with_a_chain_flag_and_names_what_blocks(member, chain):
    api = Client(HTTP_AUTHORIZATION="Bearer " + api_token_create(user=member, name="t")[1])
    refused = api.delete(f"/api/v1/datasets/{chain['dataset'].pk}")
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["field"] == "chain" and any(f"job #{chain['merge'].pk}" in item for item in error["blocking"])
    done = api.delete(f"/api/v1/fine_tuning/jobs/{chain['merge'].pk}")
    assert done.status_code == 200 and done.json()["deleted"][0].startswith(f"job #{chain['merge'].pk}")
    assert api.get(f"/api/v1/fine_tuning/jobs/{chain['merge'].pk}").status_code == 404
    assert api.delete(f"/api/v1/datasets/{chain['dataset'].pk}?chain=true").status_code == 200


def test_a_download_under_way_survives_the_delete_and_the_purge(member_client, member, chain, settings):
    settings.DELETED_RETENTION_HOURS = 0
    merged = chain["merged"]
    response = member_client.get(f"/artifacts/{merged.pk}/download/")
    stream = iter(response.streaming_content)
    first = next(stream)  # the download has begun
    storage_delete(user=member, target=merged)
    storage_purge_due()
    assert not (job_output_dir(chain["merge"].pk) / "model").exists()
    archive = zipfile.ZipFile(io.BytesIO(first + b"".join(stream)))
    names = sorted(name.split("/", 1)[1] for name in archive.namelist())
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert archive.read(archive.namelist()[names.index("adapter_model.safetensors")]) == b"w" * 3000


def test_a_purge_waits_while_something_restored_still_uses_a_deleted_row(member, chain, settings):
    settings.DELETED_RETENTION_HOURS = 0
    first = storage_delete(user=member, target=chain["merge"])
    second = storage_delete(user=member, target=chain["training"])
    third = storage_delete(user=member, target=chain["dataset"])  # nothing live depends on it now
    storage_restore(user=member, deletion_id=second.pk)  # the training job is back, on a deleted dataset
    assert storage_purge_due() == [first.pk]
    third.refresh_from_db()
    assert third.purged_at is None and "still used by" in third.purge_blocked
    assert Dataset.everything.filter(pk=chain["dataset"].pk).exists()
    assert Job.objects.get(pk=chain["training"].pk).dataset_id == chain["dataset"].pk


def test_two_purges_at_once_purge_each_deletion_once(member, chain, settings):
    settings.DELETED_RETENTION_HOURS = 0
    storage_delete(user=member, target=chain["merge"])
    later = timezone.now() + timedelta(seconds=1)
    assert len(storage_purge_due(now=later)) == 1
    assert storage_purge_due(now=later) == []


def test_base_models_are_deleted_by_staff_once_nothing_uses_them(member, chain, tiny_base_model, tiny_model):
    staff = user_create(username="root", password="pw-root-123")
    staff.is_staff = True
    staff.save()
    with pytest.raises(StorageRefusal) as refusal:
        storage_delete(user=staff, target=tiny_base_model, chain=True)  # never another team's chain
    assert "no job or artifact of any team" in refusal.value.message
    unused = BaseModel.objects.create(name="spare", source="local", ref=str(tiny_model) + "-copy")
    with pytest.raises(StorageRefusal):
        storage_delete(user=member, target=unused)
    storage_delete(user=staff, target=unused)
    assert not BaseModel.objects.filter(pk=unused.pk).exists()
    BaseModel.objects.create(name="spare again", source="local", ref=unused.ref)  # its ref is free again
    assert AuditEntry.objects.get(action="model.deleted").team is None


def test_the_storage_page_shows_each_teams_use_and_quota(member_client, member, team, chain, outsider):
    TeamQuota.objects.create(team=team, storage_gb=1)
    page = member_client.get("/storage/").content.decode()
    usage = team_storage_usage(team_id=team.pk)
    assert usage.jobs_bytes == sum(Job.objects.get(pk=chain[k].pk).disk_bytes for k in ("training", "merge"))
    assert usage.datasets_bytes == chain["dataset"].size_bytes
    assert "of a 1.0\xa0GB quota" in page and "Largest" in page and f"job #{chain['training'].pk}" in page
    rival = Client()
    rival.force_login(outsider)
    rival_page = rival.get("/storage/").content.decode()
    assert "Rivals" in rival_page and f"job #{chain['training'].pk}" not in rival_page


def test_a_team_over_its_quota_cannot_upload_or_start_jobs_but_can_analyse_and_delete(
        member_client, member, team, chain, tiny_base_model):
    used = team_storage_usage(team_id=team.pk).used_bytes
    TeamQuota.objects.create(team=team, storage_gb=used / 2**30)  # full
    upload = SimpleUploadedFile("more.jsonl", b'{"instruction": "a", "output": "b"}\n' * 20)
    response = member_client.post("/datasets/", {"file": upload})
    assert response.status_code == 400
    assert "storage is full" in response.content.decode() and "Storage page" in response.content.decode()
    with pytest.raises(ConfigError) as refused:
        train(member, team, chain["dataset"], tiny_base_model)
    assert "storage" in refused.value.errors
    api = Client(HTTP_AUTHORIZATION="Bearer " + api_token_create(user=member, name="t")[1])
    body = {"model": tiny_base_model.pk, "training_file": chain["dataset"].pk, "method": {"type": "lora"},
            "hyperparameters": {"max_steps": 2}}
    response = api.post("/api/v1/fine_tuning/jobs", body, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["field"] == "storage"
    dataset_analysis_request(dataset=chain["dataset"], user=member, base_model=tiny_base_model, max_length=64,
                                        loss_on_prompt=False)

    storage_delete(user=member, target=chain["merge"])  # deleting frees the quota at once
    assert train(member, team, chain["dataset"], tiny_base_model).status == Job.Status.QUEUED


def test_a_new_version_does_not_take_the_number_of_a_deleted_one(member, dataset, tmp_path):
    from studio.datasets.services_work import dataset_version_create

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"instruction": "Say hi.", "output": "hi!"}\n')

    def new_version():
        return dataset_version_create(parents=[dataset], user=member, rows_path=rows, operation="subsample",
                                      parameters={}, report={}, schema="alpaca")

    second = new_version()
    storage_delete(user=member, target=second)
    assert new_version().version == 3


def test_the_sweep_removes_old_files_no_row_names_and_keeps_the_rest(member, chain, media_root):
    import os
    import time

    from studio.storage.services import storage_sweep_orphans

    stray_file = media_root / "datasets" / "1" / "0123456789abcdef" / "killed-upload.jsonl"
    stray_job = media_root / "jobs" / "9999"
    stray_download = media_root / "models" / "downloads" / "job-9998"
    fresh_file = media_root / "datasets" / "1" / "fedcba9876543210" / "upload-in-flight.jsonl"
    for folder in (stray_file.parent, stray_job / "checkpoints", stray_download, fresh_file.parent):
        folder.mkdir(parents=True, exist_ok=True)
    stray_file.write_text("{}\n")
    fresh_file.write_text("{}\n")
    (stray_job / "checkpoints" / "x").write_text("x")
    two_hours_ago = time.time() - 7200
    for path in (stray_file, stray_job, stray_download, chain["dataset"].file.path,
                 job_output_dir(chain["training"].pk)):
        os.utime(path, (two_hours_ago, two_hours_ago))

    removed = storage_sweep_orphans()
    assert sorted(removed) == sorted(map(str, (stray_file, stray_job, stray_download)))
    assert fresh_file.exists()  # young: its row may be on its way
    assert os.path.exists(chain["dataset"].file.path) and job_output_dir(chain["training"].pk).is_dir()
