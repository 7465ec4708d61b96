"""The harness evaluation from the browser's side: the evaluate form refuses
a bad column mapping naming the setting, queues a good one with the base
model to score beside the artifact, and its results show, base and artifact
side by side, on the artifact page and the compare page and in the downloads."""

import csv
import io
import json

import pytest

from studio.artifacts.services import artifact_create
from studio.datasets.services import dataset_create_from_file
from studio.jobs.events import job_event_record
from studio.jobs.models import Job, JobEvent
from studio.jobs.selectors import job_output_dir
from studio.jobs.services import job_create_train, job_finish
from tuning.events import HarnessEvent

MAPPING = {"harness": "multiple_choice", "question_column": "prompt", "choices_column": "options",
           "answer_column": "key"}


@pytest.fixture
def quiz(member, team, tmp_path):
    data = tmp_path / "quiz.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Pick {i}.", "options": ["a", "b", "c"], "key": "ABC"[i % 3]})
                            + "\n" for i in range(6)))
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="quiz.jsonl")


@pytest.fixture
def adapter(member, team, tmp_path, tiny_base_model):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"instruction": f"Say {w}.", "output": f"{w}!"}) + "\n"
                             for w in ("hello", "yes", "blue", "green")))
    trained_on = dataset_create_from_file(team=team, user=member, source_path=pairs, filename="pairs.jsonl")
    job = job_create_train(user=member, team=team, dataset=trained_on, base_model=tiny_base_model,
                           settings_values={"max_steps": 2, "batch_size": 2, "precision": "fp32"},
                           method_params={"rank": 4})
    return artifact_create(job=job, kind="adapter", path=str(job_output_dir(job.pk)), metadata={})


def _post(client, adapter, quiz, **settings):
    return client.post("/jobs/new/evaluate/", {"artifact": adapter.pk, "dataset": quiz.pk, **MAPPING, **settings})


def test_the_form_refuses_a_missing_column_and_an_answer_out_of_range(member_client, adapter, quiz, tmp_path,
                                                                      member, team):
    missing = _post(member_client, adapter, quiz, question_column="question")
    page = missing.content.decode()
    assert missing.status_code == 400
    assert "question_column:" in page and "column &#x27;question&#x27; is not in quiz.jsonl" in page

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "options": ["x", "y"], "key": "A"}) + "\n"
                   + json.dumps({"prompt": "q", "options": ["x", "y"], "key": 5}) + "\n")
    bad_set = dataset_create_from_file(team=team, user=member, source_path=bad, filename="bad.jsonl")
    out_of_range = _post(member_client, adapter, bad_set)
    assert out_of_range.status_code == 400
    assert "answer_column:" in out_of_range.content.decode() and "row 2: answer &#x27;5&#x27; is out of range" \
        in out_of_range.content.decode()
    assert not Job.objects.filter(kind=Job.Kind.EVALUATE).exists()


def test_a_harness_job_is_queued_with_its_base_and_its_scores_show_side_by_side(member_client, adapter, quiz,
                                                                               tiny_base_model):
    response = _post(member_client, adapter, quiz, num_fewshot=1)
    assert response.status_code == 302
    job = Job.objects.get(kind=Job.Kind.EVALUATE)
    assert job.config["harness"] == "multiple_choice" and job.config["base_model"] == tiny_base_model.ref
    assert job.config["num_fewshot"] == 1 and job.input_artifact_ids == [adapter.pk]

    # What the worker's run reports (tuning.harness), recorded as the worker's sink records it.
    results = [{"task": "studio_quiz", "side": side, "n": 6, "metrics": {"acc": acc, "acc_norm": acc},
                "stderr": {"acc": 0.2, "acc_norm": 0.2}} for side, acc in (("artifact", 0.5), ("base", 0.3333))]
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    event = HarnessEvent(results=results, mode="multiple_choice", tasks=["studio_quiz"])
    job_event_record(job_id=job.pk, kind=event.kind, data=event.to_dict())
    job_finish(job_id=job.pk, status=Job.Status.SUCCEEDED, message="done")

    page = member_client.get(f"/artifacts/{adapter.pk}/").content.decode()
    table = page[page.index('class="list harness-table"'):]
    assert "studio_quiz" in table and "0.5000" in table and "0.3333" in table and "± 0.2000" in table
    assert "0.1667" in table  # Δ artifact − base

    exported = json.loads(member_client.get(f"/artifacts/{adapter.pk}/scores.json").content)
    assert exported["evaluations"][0]["harness"] == results
    assert "dataset_path" not in exported["evaluations"][0]["settings"]
    rows = list(csv.DictReader(io.StringIO(member_client.get(f"/artifacts/{adapter.pk}/scores.csv").content
                                           .decode())))
    assert {(r["side"], r["metric"], r["value"], r["stderr"]) for r in rows} == {
        ("artifact", "acc", "0.5", "0.2"), ("artifact", "acc_norm", "0.5", "0.2"),
        ("base", "acc", "0.3333", "0.2"), ("base", "acc_norm", "0.3333", "0.2")}
    assert member_client.get(f"/artifacts/{adapter.pk}/scores.xml").status_code == 404

    # The compare page: the training job shows the harness run on its adapter, beside the evaluate job itself.
    compare = member_client.get(f"/jobs/compare/?ids={adapter.job_id}&ids={job.pk}").content.decode()
    section = compare[compare.index('id="compare-harness"'):]
    assert section.count("0.5000") == 4 and "0.3333" in section and f"evaluate job #{job.pk}" in section


def test_another_team_cannot_download_the_scores(adapter, outsider):
    from django.test import Client

    rival = Client()
    rival.force_login(outsider)
    assert rival.get(f"/artifacts/{adapter.pk}/scores.csv").status_code == 404


def test_the_api_takes_the_same_settings_and_serves_the_scores(client, member, adapter, quiz):
    from studio.accounts.services import api_token_create

    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_token_create(user=member, name='script')[1]}"
    body = {"artifact": adapter.pk, "dataset": quiz.pk, "settings": {**MAPPING, "answer_column": "solution"}}
    refused = client.post("/api/v1/evaluations", body, content_type="application/json")
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "settings.answer_column"
    assert "column 'solution' is not in quiz.jsonl" in refused.json()["error"]["message"]
    body["settings"] = MAPPING
    queued = client.post("/api/v1/evaluations", body, content_type="application/json")
    assert queued.status_code == 201 and Job.objects.get(pk=queued.json()["id"]).config["harness"] == "multiple_choice"
    scores = client.get(f"/api/v1/artifacts/{adapter.pk}/scores?format=csv")
    assert scores.status_code == 200 and scores.content.decode().startswith("job,dataset,finished_at,source")
    assert client.get(f"/api/v1/artifacts/{adapter.pk}/scores?format=xml").json()["error"]["field"] == "format"


def test_the_worker_runs_the_job_scores_the_base_beside_it_and_stops_on_a_cancel(member_client, member, team, quiz,
                                                                                 tiny_base_model, tiny_model,
                                                                                 monkeypatch, tmp_path):
    """The evaluate kind's worker function on a full-model artifact: both sides scored through the harness,
    per-batch progress and the harness event stored as the job's events; a cancelled job stops."""
    from studio.jobs.services import job_cancel
    from worker.kind_runs import run_evaluate
    from worker.sink import JobSink

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    maker = Job.objects.create(team=team, owner=member, kind=Job.Kind.MERGE, base_model=tiny_base_model, config={})
    import shutil

    shutil.copytree(tiny_model, job_output_dir(maker.pk))
    model = artifact_create(job=maker, kind="model", path=str(job_output_dir(maker.pk)), metadata={})
    assert _post(member_client, model, quiz).status_code == 302
    job = Job.objects.get(kind=Job.Kind.EVALUATE)
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)

    status, summary = run_evaluate(job, JobSink(job))
    assert status == "succeeded" and summary.startswith("Harness: studio_quiz acc ") and "(base " in summary
    events = list(JobEvent.objects.filter(job=job).order_by("seq").values_list("kind", "data"))
    harness = [data for kind, data in events if kind == "harness"]
    assert [(r["side"], r["n"]) for r in harness[0]["results"]] == [("artifact", 6), ("base", 6)]
    progress = [data for kind, data in events if kind == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] == 18 and progress[-1]["unit"] == "requests"

    job_cancel(job=job)  # running: the worker is asked to stop
    assert run_evaluate(job, JobSink(job)) == ("cancelled", "Cancelled")
