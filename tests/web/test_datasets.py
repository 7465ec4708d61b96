"""Uploading datasets in every format, confirming an unsure schema, and who
may see and touch what. Worker tasks are called in-process here."""

import io
import json
import zipfile

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings

from studio.accounts.models import Membership
from studio.accounts.services import user_create
from studio.datasets.models import Dataset, DatasetOperation
from studio.datasets.selectors import dataset_training_refusal
from worker.runner import run_job

PAIRS = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(12)]


def run_dataset_job(row) -> str:
    """Run the job behind an analysis or operation as a worker would (claim, run, finish); its end status."""
    return run_job(row.job_id, worker_name="test-worker", pool=row.job.device_pool)


def jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def parquet_bytes(rows) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def zip_bytes(members: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def upload(client, name, content, **extra):
    data = content if isinstance(content, bytes) else content.encode()
    return client.post("/datasets/", {"file": SimpleUploadedFile(name, data)}, **extra)


def upload_many(client, files: dict, **extra):
    uploads = [SimpleUploadedFile(name, content if isinstance(content, bytes) else content.encode())
               for name, content in files.items()]
    return client.post("/datasets/", {"file": uploads}, **extra)


def stored_files(settings):
    root = settings.MEDIA_ROOT / "datasets"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_good_jsonl_upload_shows_rows_and_count(member_client, settings):
    response = upload(member_client, "qa.jsonl", jsonl(PAIRS))
    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response.url == f"/datasets/{dataset.pk}/"
    page = member_client.get(response.url).content.decode()
    assert "12 rows" in page and "Question 0?" in page and "Answer 4." in page and "Answer 5." not in page
    assert dataset.row_count == 12 and dataset.team.slug == "default" and stored_files(settings) == ["qa.jsonl"]
    assert dataset.confirmed and dataset.tasks == ["sft", "grpo"] and "Train on this dataset" in page


@pytest.mark.parametrize("name, content, file_format, encoding, schema", [
    ("a.jsonl", jsonl(PAIRS[:3]), "jsonl", "utf-8", "alpaca"),
    ("a.json", json.dumps(PAIRS[:3]), "json", "utf-8", "alpaca"),
    ("a.csv", "instruction,output\nq1,a1\nq2,a2\nq3,a3\n", "csv", "utf-8", "alpaca"),
    ("a.tsv", "prompt\tcompletion\nq1\ta1\nq2\ta2\nq3\ta3\n", "tsv", "utf-8", "prompt_completion"),
    ("a.parquet", parquet_bytes(PAIRS[:3]), "parquet", "utf-8", "alpaca"),
    ("a.csv", "instruction,output\ncaf\xe9,cr\xe8me\nq2,a2\nq3,a3\n".encode("latin-1"), "csv", "latin-1", "alpaca"),
    ("a.csv", "instruction,output\nq1,a1\nq2,a2\nq3,\u00e9t\u00e9\n".encode("utf-16"), "csv", "utf-16-le", "alpaca"),
    ("a.jsonl", jsonl([{"messages": [{"role": "user", "content": f"hi {i}"},
                                     {"role": "assistant", "content": "hello"}]} for i in range(3)]),
     "jsonl", "utf-8", "chat"),
    ("a.jsonl", jsonl([{"text": f"review {i}", "label": "good" if i % 2 else "bad"} for i in range(3)]),
     "jsonl", "utf-8", "text+label"),
    ("a.txt", "First paragraph.\n\nSecond one.\n\nThird one.\n", "text", "utf-8", "text"),
    ("a.zip", zip_bytes({"part.jsonl": jsonl(PAIRS[:3])}), "zip", "utf-8", "alpaca"),
])
def test_every_format_and_schema_is_read_and_shown(member_client, name, content, file_format, encoding, schema):
    response = upload(member_client, name, content)
    assert response.status_code == 302, response.content.decode()[:2000]
    dataset = Dataset.objects.get()
    assert (dataset.format, dataset.encoding, dataset.schema, dataset.row_count) == (file_format, encoding, schema, 3)
    assert dataset.confirmed and dataset.tasks
    page = member_client.get(response.url).content.decode()
    for shown in (f'id="detected-format">{file_format}<', f'id="detected-encoding">{encoding}<',
                  f'id="detected-schema">{schema}<', "3 rows"):
        assert shown in page


def test_several_files_make_one_dataset_that_is_combined_on_confirmation(member_client, settings):
    response = upload_many(member_client, {"one.jsonl": jsonl(PAIRS[:4]), "two.csv": "instruction,output\nq,a\n"})
    dataset = Dataset.objects.get()
    assert response.status_code == 302
    assert dataset.row_count == 5 and dataset.format == "mixed" and not dataset.confirmed and dataset.tasks == []
    assert [f["name"] for f in dataset.source_files] == ["one.jsonl", "two.csv"]
    assert stored_files(settings) == ["one.jsonl", "two.csv"]
    page = member_client.get(response.url).content.decode()
    assert "These 2 files become one version" in page and "Train on this dataset" not in page
    member_client.post(f"/datasets/{dataset.pk}/mapping/", {"schema": "alpaca", "instruction": "instruction",
                                                            "output": "output"})
    run_dataset_job(DatasetOperation.objects.get())
    combined = Dataset.objects.get(version=2)
    assert combined.row_count == 5 and combined.format == "jsonl" and combined.confirmed
    assert list(combined.parents.all()) == [dataset]


def test_a_zip_of_several_files_reads_every_member(member_client):
    upload(member_client, "many.zip", zip_bytes({"a/1.jsonl": jsonl(PAIRS[:2]), "a/2.jsonl": jsonl(PAIRS[2:5]),
                                                 "__MACOSX/._1.jsonl": "junk"}))
    dataset = Dataset.objects.get()
    assert dataset.row_count == 5 and [f["name"] for f in dataset.source_files] == ["many.zip/a/1.jsonl",
                                                                                     "many.zip/a/2.jsonl"]


def test_htmx_upload_redirects_the_page(member_client):
    response = upload(member_client, "a.csv", "instruction,output\nq,a\n", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Redirect"].startswith("/datasets/")


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"instruction": "q", "output": "a"}\n' * 16 + "{oops\n", "bad.jsonl, row 17: invalid JSON"),
    ("bad.csv", "instruction,output\nq,a\nq,a,extra\n", "bad.csv, row 2: has 3 values but the header has 2"),
    ("bad.json", '[{"instruction": "q", "output": "a"}, 7]', "bad.json, row 2: element 2"),
    ("empty.jsonl", "", "the file is empty"),
    ("blob.jsonl", b"\x00\x01\x02\x03binary", "this looks like a binary file"),
    ("data.exe", "MZ", "unsupported file type '.exe'"),
    ("broken.zip", b"PK\x03\x04 not really a zip", "broken.zip: not a readable zip archive"),
])
def test_bad_uploads_say_what_and_where_and_store_nothing(member_client, settings, name, content, message):
    for headers in ({}, {"HTTP_HX_REQUEST": "true"}):
        response = upload(member_client, name, content, **headers)
        page = response.content.decode()
        assert message in page.replace("&#x27;", "'"), page
        assert "Traceback" not in page
    assert Dataset.objects.count() == 0 and stored_files(settings) == []


def test_upload_over_the_size_limit_is_refused(member_client, settings):
    with override_settings(UPLOAD_MAX_BYTES=1000):
        response = upload(member_client, "big.jsonl", '{"instruction": "q", "output": "a"}\n' * 100)
    assert response.status_code == 400
    assert "larger than the 1000\xa0bytes upload limit" in response.content.decode()
    assert Dataset.objects.count() == 0 and stored_files(settings) == []


def test_unsure_schema_needs_a_confirmed_mapping_before_training(member_client):
    upload(member_client, "qa.csv", "question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n")
    dataset = Dataset.objects.get()
    assert (dataset.detected_schema, dataset.schema_confidence, dataset.confirmed) == (
        "prompt_completion", "unsure", False)
    assert dataset_training_refusal(dataset).startswith("qa is waiting for its column mapping")
    page = member_client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert 'id="mapping-form"' in page and "Train on this dataset" not in page
    assert '<option value="question" selected>' in page and '<option value="answer" selected>' in page

    # A required field left out is named; nothing is queued.
    response = member_client.post(f"/datasets/{dataset.pk}/mapping/", {"schema": "prompt_completion",
                                                                       "prompt": "question", "completion": ""})
    assert "This field is required" in response.content.decode() and not DatasetOperation.objects.exists()

    response = member_client.post(f"/datasets/{dataset.pk}/mapping/", {"schema": "prompt_completion",
                                                                       "prompt": "question", "completion": "answer"})
    run = DatasetOperation.objects.get()
    assert run.operation == "map_columns" and 'data-status="queued"' in response.content.decode()
    assert run_dataset_job(run) == "succeeded"
    mapped = Dataset.objects.get(version=2)
    assert mapped.confirmed and mapped.tasks == ["sft", "grpo"] and mapped.columns == ["prompt", "completion"]
    assert mapped.parameters == {"schema": "prompt_completion", "mapping": {"prompt": "question",
                                                                            "completion": "answer"}}
    assert dataset_training_refusal(mapped) is None
    page = member_client.get(f"/datasets/{mapped.pk}/").content.decode()
    assert "Train on this dataset" in page and "Capital of France?" in page and "map_columns" in page


def test_unknown_columns_are_mapped_by_picking_a_schema(member_client):
    upload(member_client, "cols.csv", "question_text,reply\nq,a\n")
    dataset = Dataset.objects.get()
    assert dataset.detected_schema == "" and not dataset.confirmed
    page = member_client.get(f"/datasets/{dataset.pk}/").content.decode()
    assert "No known schema was found" in page
    form = member_client.get(f"/datasets/{dataset.pk}/mapping/?schema=text%2Blabel").content.decode()
    assert 'name="text"' in form and 'name="label"' in form and 'name="instruction"' not in form
    member_client.post(f"/datasets/{dataset.pk}/mapping/", {"schema": "alpaca", "instruction": "question_text",
                                                            "output": "reply"})
    run_dataset_job(DatasetOperation.objects.get())
    assert Dataset.objects.get(version=2).preview[0]["prompt"] == "q"


def test_rows_the_mapping_reads_as_empty_are_named_and_block_training(member_client):
    upload(member_client, "qa.csv", "question,answer\nq1,a1\nq2,\n")
    dataset = Dataset.objects.get()
    member_client.post(f"/datasets/{dataset.pk}/mapping/", {"schema": "prompt_completion", "prompt": "question",
                                                            "completion": "answer"})
    assert run_dataset_job(DatasetOperation.objects.get()) == "succeeded"
    mapped = Dataset.objects.get(version=2)
    assert "row 2, field 'completion': is empty" in mapped.problem
    assert "has rows training would refuse" in dataset_training_refusal(mapped)
    page = member_client.get(f"/datasets/{mapped.pk}/").content.decode()
    assert 'id="dataset-problem"' in page and "Train on this dataset" not in page


def test_a_mapping_to_a_column_the_data_lacks_is_refused(member_client):
    upload(member_client, "qa.csv", "question,answer\nq1,a1\n")
    dataset = Dataset.objects.get()
    response = member_client.post(f"/datasets/{dataset.pk}/mapping/", {"schema": "prompt_completion",
                                                                       "prompt": "question", "completion": "nope"})
    assert "Select a valid choice" in response.content.decode() and not DatasetOperation.objects.exists()


def test_a_failed_step_shows_its_message(member_client):
    upload(member_client, "qa.csv", "question,answer\nq1,a1\n")
    dataset = Dataset.objects.get()
    member_client.post(f"/datasets/{dataset.pk}/mapping/", {"schema": "chat", "messages": "question"})
    run = DatasetOperation.objects.get()
    assert run_dataset_job(run) == "failed"
    run.refresh_from_db()
    assert "row 1" in run.message and "messages" in run.message
    page = member_client.get(f"/datasets/{dataset.pk}/operations/{run.pk}/").content.decode()
    assert 'data-status="failed"' in page and "Traceback" not in page and Dataset.objects.count() == 1


def test_other_teams_cannot_see_or_touch_a_dataset(member_client, client, outsider, tiny_base_model):
    upload(member_client, "mine.csv", "instruction,output\nsecret question,secret answer\n")
    dataset = Dataset.objects.get()
    member_client.post(f"/datasets/{dataset.pk}/analyse/", {"base_model": tiny_base_model.pk, "max_length": 64})
    analysis = dataset.analyses.get()
    member_client.post(f"/datasets/{dataset.pk}/diet/dedupe/", {"dedupe-threshold": "0.8"})
    run = dataset.operations.get()
    client.force_login(outsider)
    for url in (f"/datasets/{dataset.pk}/", f"/datasets/{dataset.pk}/mapping/",
                f"/datasets/{dataset.pk}/analyses/{analysis.pk}/", f"/datasets/{dataset.pk}/operations/{run.pk}/"):
        assert client.get(url).status_code == 404, url
    for url in (f"/datasets/{dataset.pk}/analyse/", f"/datasets/{dataset.pk}/diet/dedupe/",
                f"/datasets/{dataset.pk}/analyses/{analysis.pk}/drop/", f"/datasets/{dataset.pk}/mapping/"):
        assert client.post(url, {"code": "exact_duplicates"}).status_code == 404, url
    assert "mine" not in client.get("/datasets/").content.decode()
    assert dataset.analyses.count() == 1 and dataset.operations.count() == 1


def test_login_is_needed_for_every_dataset_page(client, member):
    for url in ("/datasets/", "/datasets/1/", "/datasets/1/analyse/", "/datasets/1/diet/dedupe/"):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response.url, url


def test_viewers_see_but_cannot_change(member_client, client, team, tiny_base_model):
    upload(member_client, "a.jsonl", jsonl(PAIRS))
    dataset = Dataset.objects.get()
    viewer = user_create(username="vic", password="pw-vic-12345", team=team, role=Membership.Role.VIEWER)
    client.force_login(viewer)
    assert client.get(f"/datasets/{dataset.pk}/").status_code == 200
    response = client.post(f"/datasets/{dataset.pk}/diet/dedupe/", {"dedupe-threshold": "0.8"})
    assert "view-only access" in response.content.decode()
    response = client.post(f"/datasets/{dataset.pk}/analyse/", {"base_model": tiny_base_model.pk, "max_length": 64})
    assert "view-only access" in response.content.decode()
    assert not dataset.operations.exists() and not dataset.analyses.exists()
