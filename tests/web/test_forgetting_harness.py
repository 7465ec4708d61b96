"""The forgetting check with harness scores from the browser's side and the API: the artifact page's form
takes a dataset version as a multiple-choice task (a bad mapping refused naming the setting) or named tasks,
the worker's own runner scores base and tune, and the artifact page shows both with the warning; a training
job's chained check carries its named tasks."""

import json

import pytest

from studio.accounts.services import api_token_create
from studio.datasets.services import dataset_create_from_file
from studio.jobs.models import Job
from tests.web.test_judge_jobs import tuned, unchanged  # noqa: F401 (fixtures)
from tests.web.test_steps import dataset  # noqa: F401 (a fixture)
from worker.runner import run_job


@pytest.fixture
def quiz(member, team, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "quiz.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Pick {i}.", "options": ["red", "blue", "green"],
                                        "key": "ABC"[i % 3]}) + "\n" for i in range(6)))
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="quiz.jsonl")


MAPPING = {"question_column": "prompt", "choices_column": "options", "answer_column": "key"}


def test_the_artifact_page_runs_the_check_with_a_dataset_as_a_harness_task(member_client, tuned, unchanged,  # noqa: F811
                                                                           quiz):
    page = member_client.get(f"/artifacts/{tuned.pk}/").content.decode()
    assert 'name="harness_dataset"' in page and f'<option value="{quiz.pk}">' in page
    refused = member_client.post("/jobs/new/forgetting/", {"artifact": tuned.pk, "threshold_pct": "10",
                                                           "harness_dataset": quiz.pk, **MAPPING,
                                                           "question_column": "question"})
    assert refused.status_code == 400
    assert "harness.question_column:" in refused.content.decode()
    assert "column &#x27;question&#x27; is not in quiz.jsonl" in refused.content.decode()
    both = member_client.post("/jobs/new/forgetting/", {"artifact": tuned.pk, "harness_dataset": quiz.pk,
                                                        "harness_tasks": "arc_easy", **MAPPING})
    assert both.status_code == 400 and "not both" in both.content.decode()

    checks = {}
    for artifact in (tuned, unchanged):
        started = member_client.post("/jobs/new/forgetting/", {"artifact": artifact.pk, "threshold_pct": "10",
                                                               "harness_dataset": quiz.pk, **MAPPING})
        assert started.status_code == 302
        job = checks[artifact.pk] = Job.objects.filter(kind="forgetting").latest("pk")
        assert job.config["harness"]["harness"] == "multiple_choice"
        assert job.config["harness"]["question_column"] == "prompt"
        assert run_job(job.pk, worker_name="test-worker") == Job.Status.SUCCEEDED
    same = member_client.get(f"/artifacts/{unchanged.pk}/").content.decode()
    assert "Possible forgetting" not in same and 'class="forgetting-harness"' in same
    assert "<td>studio_quiz</td><td>acc</td>" in same and "within it" in same  # base and tune score alike
    damaged = member_client.get(f"/artifacts/{tuned.pk}/").content.decode()
    assert "Possible forgetting" in damaged and "<td>studio_quiz</td><td>acc</td>" in damaged
    job_page = member_client.get(f"/jobs/{checks[tuned.pk].pk}/").content.decode()  # the job page shows the same
    assert "Possible forgetting" in job_page and 'class="forgetting-harness"' in job_page


def test_the_api_takes_harness_settings_naming_a_bad_one(client, member, tuned, quiz):  # noqa: F811
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_token_create(user=member, name='script')[1]}"

    def post(harness):
        return client.post("/api/v1/forgetting-checks", {"artifact": tuned.pk, "harness": harness},
                           content_type="application/json")

    unknown = post({"dataset": quiz.pk, "colour": "red"})
    assert unknown.status_code == 400 and unknown.json()["error"]["field"] == "harness.colour"
    missing = post({"dataset": 999999})
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "harness.dataset"
    column = post({"dataset": quiz.pk, **MAPPING, "answer_column": "answer"})
    assert column.status_code == 400 and column.json()["error"]["field"] == "harness.answer_column"
    started = post({"dataset": quiz.pk, **MAPPING})
    assert started.status_code == 201, started.content
    named = post({"tasks": "arc_easy, hellaswag"})
    assert named.status_code == 201
    assert Job.objects.get(pk=named.json()["id"]).config["harness"]["harness_tasks"] == "arc_easy, hellaswag"


def test_a_training_jobs_chained_check_carries_its_harness_tasks(member, team, dataset, tiny_base_model):  # noqa: F811
    from studio.jobs.services import job_create_train
    from tuning.errors import ConfigError

    job = job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                           settings_values={"max_steps": 2, "batch_size": 2, "precision": "fp32",
                                            "forgetting_threshold_pct": 5, "forgetting_harness_tasks": "arc_easy"},
                           method_params={"rank": 4})
    check = Job.objects.get(kind="forgetting", depends_on=job)
    assert check.config["harness"]["harness"] == "named_tasks" and check.config["harness"]["harness_tasks"] == \
        "arc_easy"
    with pytest.raises(ConfigError) as caught:  # tasks without the check's threshold would never run
        job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                         settings_values={"max_steps": 2, "forgetting_harness_tasks": "arc_easy"},
                         method_params={"rank": 4})
    assert "forgetting_harness_tasks" in caught.value.errors
