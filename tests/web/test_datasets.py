import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings

from studio.datasets.models import Dataset


def upload(client, name, content, **extra):
    data = content if isinstance(content, bytes) else content.encode()
    return client.post("/datasets/", {"file": SimpleUploadedFile(name, data)}, **extra)


def stored_files(settings):
    root = settings.MEDIA_ROOT / "datasets"
    return sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_good_jsonl_upload_shows_rows_and_count(member_client, settings):
    content = "".join(json.dumps({"instruction": f"Question {i}?", "output": f"Answer {i}."}) + "\n" for i in range(12))
    response = upload(member_client, "qa.jsonl", content)
    dataset = Dataset.objects.get()
    assert response.status_code == 302 and response.url == f"/datasets/{dataset.pk}/"
    page = member_client.get(response.url).content.decode()
    assert "12 rows" in page and "Question 0?" in page and "Answer 4." in page and "Answer 5." not in page
    assert dataset.row_count == 12 and dataset.team.slug == "default" and stored_files(settings) == ["qa.jsonl"]


def test_htmx_upload_redirects_the_page(member_client):
    response = upload(member_client, "a.csv", "instruction,output\nq,a\n", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Redirect"].startswith("/datasets/")


@pytest.mark.parametrize("name, content, message", [
    ("bad.jsonl", '{"instruction": "q", "output": "a"}\n' * 16 + "{oops\n", "bad.jsonl, row 17: invalid JSON"),
    ("cols.csv", "question_text,reply\nq,a\n", "cols.csv, row 1: no columns this studio knows (found: question_text, "
                                               "reply). Use instruction + output"),
    ("empty.jsonl", "", "the file is empty"),
    ("blob.jsonl", b"\x00\x01\x02\x03binary", "this looks like a binary file"),
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


def test_other_teams_cannot_see_a_dataset(member_client, client, outsider):
    upload(member_client, "mine.csv", "instruction,output\nsecret question,secret answer\n")
    dataset = Dataset.objects.get()
    client.force_login(outsider)
    assert client.get(f"/datasets/{dataset.pk}/").status_code == 404
    assert "mine" not in client.get("/datasets/").content.decode()
