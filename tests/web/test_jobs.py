import pytest

from studio.datasets.services import dataset_create_from_file
from studio.jobs.models import Job, JobEvent


@pytest.fixture
def dataset(member, team, tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("instruction,output\nq1,a1\nq2,a2\n")
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="pairs.csv")


def form_data(dataset, base_model, **overrides):
    return {"dataset": dataset.pk, "base_model": base_model.pk, "method": "lora", "max_steps": 5,
            "method__rank": 4, "learning_rate": 0.001, "batch_size": 2, **overrides}


def test_form_shows_the_settings_that_matter(member_client, dataset, tiny_base_model):
    page = member_client.get(f"/jobs/new/?dataset={dataset.pk}").content.decode()
    for label in ["LoRA rank", "LoRA alpha", "Learning rate", "Epochs", "Max steps", "Batch size", "Max length (tokens)"]:
        assert f">{label}</label>" in page, label
    assert f'<option value="{dataset.pk}" selected>' in page


def test_start_creates_a_queued_job_with_a_config_snapshot(member_client, dataset, tiny_base_model, settings):
    response = member_client.post("/jobs/new/", form_data(dataset, tiny_base_model))
    job = Job.objects.get()
    assert response.status_code == 302 and response.url == f"/jobs/{job.pk}/"
    assert job.status == "queued" and job.team_id == dataset.team_id
    assert job.config["max_steps"] == 5 and job.config["method_params"]["rank"] == 4
    assert job.config["dataset_sha256"] == dataset.sha256
    assert job.config["output_dir"] == str(settings.MEDIA_ROOT / "jobs" / str(job.pk))
    assert job.config["trust_remote_code"] is False
    assert list(JobEvent.objects.values_list("seq", "kind")) == [(1, "status")]
    events = member_client.get(f"/jobs/{job.pk}/events/?after=0").json()
    assert events["status"] == "queued" and events["events"][0]["data"] == {"status": "queued"}


def test_invalid_settings_are_shown_by_field_and_nothing_is_stored(member_client, dataset, tiny_base_model):
    response = member_client.post("/jobs/new/", form_data(dataset, tiny_base_model, learning_rate=5,
                                                          method__rank=0, batch_size=""))
    page = response.content.decode()
    assert response.status_code == 400
    assert "Ensure this value is less than or equal to 1.0" in page
    assert "Ensure this value is greater than or equal to 1" in page
    assert Job.objects.count() == 0


def test_cancel_a_queued_job(member_client, dataset, tiny_base_model):
    member_client.post("/jobs/new/", form_data(dataset, tiny_base_model))
    job = Job.objects.get()
    response = member_client.post(f"/jobs/{job.pk}/cancel/", HTTP_HX_REQUEST="true")
    job.refresh_from_db()
    assert job.status == "cancelled" and 'data-status="cancelled"' in response.content.decode()
    assert [e.data["status"] for e in job.events.all()] == ["queued", "cancelled"]


def test_events_after_must_be_a_number(member_client, dataset, tiny_base_model):
    member_client.post("/jobs/new/", form_data(dataset, tiny_base_model))
    job = Job.objects.get()
    assert member_client.get(f"/jobs/{job.pk}/events/?after=x").status_code == 400


def test_gpu_only_methods_go_to_a_gpu_pool_or_are_refused(member_client, dataset, tiny_base_model, settings):
    data = form_data(dataset, tiny_base_model, method="qlora")
    settings.GPU_POOLS = []
    response = member_client.post("/jobs/new/", data)
    assert response.status_code == 400 and Job.objects.count() == 0
    settings.GPU_POOLS = ["gpu"]
    response = member_client.post("/jobs/new/", data)
    job = Job.objects.get()
    assert response.status_code == 302 and job.device_pool == "gpu" and job.config["method"] == "qlora"


def test_a_dataset_waiting_for_its_column_mapping_cannot_be_trained_on(member_client, member, team, tmp_path,
                                                                       tiny_base_model):
    data = tmp_path / "qa.csv"
    data.write_text("question,answer\nq1,a1\nq2,a2\n")
    unsure = dataset_create_from_file(team=team, user=member, source_path=data, filename="qa.csv")
    assert not unsure.confirmed
    response = member_client.post("/jobs/new/", form_data(unsure, tiny_base_model))
    assert response.status_code == 400
    assert "waiting for its column mapping to be confirmed" in response.content.decode()
    assert not Job.objects.exists()
