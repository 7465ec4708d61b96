"""The JSON API at /api/v1/: tokens, team scoping, roles, pagination, errors."""

import io
import json
import zipfile

import pytest
from django.urls import URLPattern

from studio.accounts.models import Membership, Team
from studio.accounts.services import api_token_create, api_token_revoke, user_create
from studio.api import urls as api_urls
from studio.api import urls_openai as openai_urls
from studio.datasets.services import dataset_create_from_file
from studio.jobs.events import job_event_record
from studio.jobs.models import Job
from studio.jobs.services import job_create_train, job_finish, job_progress


def bearer(raw: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {raw}"}


@pytest.fixture
def token(member):
    return api_token_create(user=member, name="script")[1]


@pytest.fixture
def api(client, token):
    """A client that sends the member's token on every request."""
    client.defaults.update(bearer(token))
    return client


@pytest.fixture
def dataset(member, team, tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("instruction,output\nq1,a1\nq2,a2\n")
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="pairs.csv")


@pytest.fixture
def job(member, team, dataset, tiny_base_model):
    return job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                            settings_values={"max_steps": 4}, method_params={}, name="secret-project")


@pytest.fixture
def artifact(job, settings):
    from studio.artifacts.services import artifact_create

    adapter = settings.MEDIA_ROOT / "jobs" / str(job.pk) / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 4}')
    return artifact_create(job=job, kind="adapter", path=str(adapter), metadata={"rank": 4})


def job_body(dataset, base_model, **overrides):
    return {"model": base_model.pk, "training_file": dataset.pk,
            "method": {"type": "lora", "params": {"rank": 4}},
            "hyperparameters": {"max_steps": 5, "learning_rate": 0.001, "batch_size": 2}, **overrides}


def post_json(client, url, body, **extra):
    return client.post(url, body, content_type="application/json", **extra)


# ---- authentication --------------------------------------------------------

ID_URLS = ["/api/v1/fine_tuning/jobs/{job}", "/api/v1/fine_tuning/jobs/{job}/events",
           "/api/v1/fine_tuning/jobs/{job}/checkpoints", "/api/v1/artifacts/{artifact}",
           "/api/v1/artifacts/{artifact}/content", "/api/v1/datasets/{dataset}"]
GET_URLS = ["/api/v1/fine_tuning/jobs", "/api/v1/artifacts", "/api/v1/models", "/api/v1/datasets",
            "/api/v1/openapi.json", *ID_URLS]
POST_URLS = ["/api/v1/fine_tuning/jobs", "/api/v1/fine_tuning/jobs/{job}/cancel", "/api/v1/datasets"]


@pytest.fixture
def ids(job, artifact, dataset):
    return {"job": job.pk, "artifact": artifact.pk, "dataset": dataset.pk}


def assert_error(response, status, field=None):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["message"] and "Traceback" not in error["message"]
    if field is not None:
        assert error["field"] == field, error
    return error


@pytest.mark.parametrize("url", GET_URLS)
def test_no_token_is_401(client, ids, url):
    response = client.get(url.format(**ids))
    assert_error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("url", POST_URLS)
def test_no_token_is_401_for_writes(client, ids, url):
    assert_error(client.post(url.format(**ids)), 401)


def test_revoked_unknown_and_malformed_tokens_are_401(client, member, ids):
    token, raw = api_token_create(user=member, name="old")
    assert client.get("/api/v1/fine_tuning/jobs", **bearer(raw)).status_code == 200
    api_token_revoke(user=member, token_id=token.pk)
    assert "revoked" in assert_error(client.get("/api/v1/fine_tuning/jobs", **bearer(raw)), 401)["message"]
    assert_error(client.get("/api/v1/models", **bearer(raw[:-1] + ("x" if raw[-1] != "x" else "y"))), 401)
    assert_error(client.get("/api/v1/models", HTTP_AUTHORIZATION=f"Token {raw}"), 401)
    assert_error(client.get("/api/v1/models", **bearer("tst_nope")), 401)


def test_token_use_is_recorded(client, member):
    token, raw = api_token_create(user=member, name="t")
    assert token.last_used_at is None
    client.get("/api/v1/models", **bearer(raw))
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_session_may_read_but_not_write(member_client, dataset, tiny_base_model):
    assert member_client.get("/api/v1/fine_tuning/jobs").json()["object"] == "list"
    response = post_json(member_client, "/api/v1/fine_tuning/jobs", job_body(dataset, tiny_base_model))
    assert "token" in assert_error(response, 401)["message"]
    assert Job.objects.count() == 0


def test_unknown_path_and_wrong_method_answer_json(api, ids):
    assert_error(api.get("/api/v1/nope"), 404)
    assert "trailing slash" in assert_error(api.get("/api/v1/fine_tuning/jobs/"), 404)["message"]
    response = api.put(f"/api/v1/fine_tuning/jobs/{ids['job']}")
    assert_error(response, 405)
    assert "GET" in response["Allow"]


def test_unexpected_failure_is_a_json_500_without_a_trace(api, job, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("database on fire at /srv/secret/path")

    monkeypatch.setattr("studio.api.views_jobs.job_checkpoints", broken)
    error = assert_error(api.get(f"/api/v1/fine_tuning/jobs/{job.pk}/checkpoints"), 500)
    assert "/srv/secret" not in error["message"]


# ---- jobs ------------------------------------------------------------------


def test_create_retrieve_and_list_a_job(api, member, dataset, tiny_base_model):
    response = post_json(api, "/api/v1/fine_tuning/jobs", job_body(dataset, tiny_base_model, name="api run"))
    assert response.status_code == 201, response.content
    created = response.json()
    job = Job.objects.get()
    assert created["id"] == job.pk and created["object"] == "fine_tuning.job"
    assert created["status"] == "queued" and created["cancel_requested"] is False and created["error"] is None
    assert created["owner"] == "alice" and created["name"] == "api run" and created["team"] == "default"
    assert created["method"] == {"type": "lora", "params": job.config["method_params"]}
    assert created["method"]["params"]["rank"] == 4
    assert created["hyperparameters"]["max_steps"] == 5 and "output_dir" not in created["hyperparameters"]
    assert created["model"] == tiny_base_model.pk and created["training_file"] == dataset.pk
    assert job.owner == member and job.config["learning_rate"] == 0.001
    assert api.get(f"/api/v1/fine_tuning/jobs/{job.pk}").json() == created
    listed = api.get("/api/v1/fine_tuning/jobs").json()
    assert listed["object"] == "list" and [j["id"] for j in listed["data"]] == [job.pk]
    assert listed["has_more"] is False


def test_invalid_settings_answer_400_with_every_bad_field(api, dataset, tiny_base_model):
    body = job_body(dataset, tiny_base_model, method={"type": "lora", "params": {"rank": 0}},
                    hyperparameters={"learning_rate": 5, "bogus": 1})
    error = assert_error(post_json(api, "/api/v1/fine_tuning/jobs", body), 400)
    fields = {e["field"] for e in error["errors"]}
    assert {"method.params.rank", "hyperparameters.learning_rate", "hyperparameters.bogus"} <= fields
    assert error["field"] in fields
    assert Job.objects.count() == 0


@pytest.mark.parametrize("change, status, field", [
    ({"model": 99999}, 404, "model"),
    ({"training_file": "x"}, 400, "training_file"),
    ({"method": {"type": "no-such-method"}}, 400, "method.type"),
    ({"hyperparameters": {"output_dir": "/etc"}}, 400, "hyperparameters.output_dir"),
    ({"colour": "blue"}, 400, "colour"),
    ({"team": "rivals"}, 404, "team"),
])
def test_bad_create_requests_name_the_field(api, dataset, tiny_base_model, outsider, change, status, field):
    assert_error(post_json(api, "/api/v1/fine_tuning/jobs", job_body(dataset, tiny_base_model, **change)),
                 status, field)
    assert Job.objects.count() == 0


def test_body_must_be_a_json_object(api):
    assert_error(api.post("/api/v1/fine_tuning/jobs", "[1]", content_type="application/json"), 400)
    assert_error(api.post("/api/v1/fine_tuning/jobs", "{nope", content_type="application/json"), 400)


def test_list_is_newest_first_with_a_cursor(api, member, team, dataset, tiny_base_model):
    jobs = [job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                             settings_values={"max_steps": 1}, method_params={}) for _ in range(3)]
    first = api.get("/api/v1/fine_tuning/jobs?limit=2").json()
    assert [j["id"] for j in first["data"]] == [jobs[2].pk, jobs[1].pk] and first["has_more"] is True
    rest = api.get(f"/api/v1/fine_tuning/jobs?limit=2&after={first['data'][-1]['id']}").json()
    assert [j["id"] for j in rest["data"]] == [jobs[0].pk] and rest["has_more"] is False
    assert_error(api.get("/api/v1/fine_tuning/jobs?limit=0"), 400, "limit")
    assert_error(api.get("/api/v1/fine_tuning/jobs?after=abc"), 400, "after")


def test_status_mapping_cancelling_and_failed(api, job):
    job_event_record(job_id=job.pk, kind="status", data={"status": "cancelling"}, job_updates={"status": "cancelling"})
    shown = api.get(f"/api/v1/fine_tuning/jobs/{job.pk}").json()
    assert shown["status"] == "running" and shown["cancel_requested"] is True
    job_finish(job_id=job.pk, status="failed", failure_kind="user_error", message="row 3: empty output")
    shown = api.get(f"/api/v1/fine_tuning/jobs/{job.pk}").json()
    assert shown["status"] == "failed" and shown["error"] == {"kind": "user_error", "message": "row 3: empty output"}
    assert shown["finished_at"] is not None


def test_member_cancels_own_queued_job(api, job):
    response = api.post(f"/api/v1/fine_tuning/jobs/{job.pk}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert_error(api.post(f"/api/v1/fine_tuning/jobs/{job.pk}/cancel"), 409, "status")


def test_cancel_a_running_job_asks_it_to_stop(api, job):
    Job.objects.filter(pk=job.pk).update(status="running")
    shown = api.post(f"/api/v1/fine_tuning/jobs/{job.pk}/cancel").json()
    assert shown["status"] == "running" and shown["cancel_requested"] is True
    assert Job.objects.get(pk=job.pk).status == "cancelling"


def test_member_cannot_cancel_a_teammates_job_but_an_admin_can(client, team, job):
    bob = user_create(username="bob", password="pw-bob-12345", team=team, role=Membership.Role.MEMBER)
    boss = user_create(username="boss", password="pw-boss-12345", team=team, role=Membership.Role.ADMIN)
    url = f"/api/v1/fine_tuning/jobs/{job.pk}/cancel"
    assert "own jobs" in assert_error(client.post(url, **bearer(api_token_create(user=bob, name="b")[1])), 403)["message"]
    assert Job.objects.get(pk=job.pk).status == "queued"
    response = client.post(url, **bearer(api_token_create(user=boss, name="a")[1]))
    assert response.status_code == 200 and response.json()["status"] == "cancelled"


def test_viewer_reads_but_cannot_write(client, team, job, dataset, tiny_base_model):
    viewer = user_create(username="victor", password="pw-victor-123", team=team, role=Membership.Role.VIEWER)
    auth = bearer(api_token_create(user=viewer, name="v")[1])
    assert client.get(f"/api/v1/fine_tuning/jobs/{job.pk}", **auth).status_code == 200
    assert client.get("/api/v1/fine_tuning/jobs", **auth).json()["data"][0]["id"] == job.pk
    assert_error(post_json(client, "/api/v1/fine_tuning/jobs", job_body(dataset, tiny_base_model), **auth), 403)
    assert_error(client.post(f"/api/v1/fine_tuning/jobs/{job.pk}/cancel", **auth), 403)
    upload = io.BytesIO(b"instruction,output\nq,a\n")
    upload.name = "more.csv"
    assert_error(client.post("/api/v1/datasets", {"file": upload}, **auth), 403)
    assert Job.objects.count() == 1 and Job.objects.get().status == "queued"


# ---- events and checkpoints -------------------------------------------------


def test_events_paginate_by_seq(api, job):
    for step in range(1, 6):
        job_progress(job_id=job.pk, kind="log", data={"message": f"line {step}"})
    everything = api.get(f"/api/v1/fine_tuning/jobs/{job.pk}/events").json()
    assert [e["seq"] for e in everything["data"]] == [1, 2, 3, 4, 5, 6] and everything["has_more"] is False
    assert everything["data"][0]["kind"] == "status" and everything["data"][1]["data"] == {"message": "line 1"}
    page = api.get(f"/api/v1/fine_tuning/jobs/{job.pk}/events?after=2&limit=3").json()
    assert [e["seq"] for e in page["data"]] == [3, 4, 5] and page["has_more"] is True and page["last_seq"] == 5
    last = api.get(f"/api/v1/fine_tuning/jobs/{job.pk}/events?after={page['last_seq']}&limit=3").json()
    assert [e["seq"] for e in last["data"]] == [6] and last["has_more"] is False
    empty = api.get(f"/api/v1/fine_tuning/jobs/{job.pk}/events?after=6").json()
    assert empty["data"] == [] and empty["last_seq"] == 6
    assert_error(api.get(f"/api/v1/fine_tuning/jobs/{job.pk}/events?limit=5000"), 400, "limit")
    assert_error(api.get(f"/api/v1/fine_tuning/jobs/{job.pk}/events?after=-1"), 400, "after")


def test_checkpoints_carry_the_metrics_at_their_step(api, job):
    for step, loss in ((1, 2.5), (2, 2.0), (3, 1.5), (4, 1.2)):
        job_progress(job_id=job.pk, kind="metrics", data={"step": step, "total_steps": 4, "loss": loss, "lr": 1e-3,
                                                          "epoch": 0.5})
        if step == 2:
            job_progress(job_id=job.pk, kind="eval", data={"step": 2, "eval_loss": 2.2, "perplexity": 9.0})
        if step % 2 == 0:
            job_progress(job_id=job.pk, kind="checkpoint", data={"step": step, "path": f"checkpoints/step-{step}"})
    data = api.get(f"/api/v1/fine_tuning/jobs/{job.pk}/checkpoints").json()["data"]
    assert [c["step"] for c in data] == [2, 4]
    assert data[0]["metrics"] == {"train_loss": 2.0, "eval_loss": 2.2, "perplexity": 9.0, "accuracy": None,
                                  "f1": None}
    assert data[1]["metrics"]["train_loss"] == 1.2 and data[1]["metrics"]["eval_loss"] is None
    assert data[0]["path"] == "checkpoints/step-2" and data[0]["job"] == job.pk


# ---- artifacts, models, datasets ---------------------------------------------


def test_artifacts_list_retrieve_and_download(api, job, artifact):
    listed = api.get(f"/api/v1/artifacts?job={job.pk}").json()
    assert [a["id"] for a in listed["data"]] == [artifact.pk]
    shown = api.get(f"/api/v1/artifacts/{artifact.pk}").json()
    assert shown["kind"] == "adapter" and shown["job"] == job.pk and shown["metadata"] == {"rank": 4}
    assert shown["web_download_url"].endswith(f"/artifacts/{artifact.pk}/download/")
    assert "path" not in shown
    download = api.get(shown["download_url"].removeprefix("http://testserver"))
    assert download.status_code == 200 and download["Content-Type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(b"".join(download.streaming_content))).namelist()
    assert any(name.endswith("adapter_config.json") for name in names)
    assert api.get(f"/api/v1/fine_tuning/jobs/{job.pk}").json()["artifacts"] == [artifact.pk]


def test_models_lists_base_models(api, tiny_base_model):
    data = api.get("/api/v1/models").json()["data"]
    assert [(m["id"], m["name"], m["object"]) for m in data] == [(tiny_base_model.pk, "tiny", "model")]


def test_dataset_upload_and_list(api, team):
    upload = io.BytesIO(b'{"instruction": "q", "output": "a"}\n{"instruction": "q2", "output": "a2"}\n')
    upload.name = "pairs.jsonl"
    response = api.post("/api/v1/datasets", {"file": upload, "name": "from the api"})
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["name"] == "from the api" and created["row_count"] == 2 and "sft" in created["tasks"]
    assert api.get(f"/api/v1/datasets/{created['id']}").json() == created
    assert [d["id"] for d in api.get("/api/v1/datasets").json()["data"]] == [created["id"]]


def test_several_files_make_one_dataset(api):
    parts = []
    for n in (1, 2):
        part = io.BytesIO(f"instruction,output\nq{n},a{n}\nr{n},b{n}\n".encode())
        part.name = f"part{n}.csv"
        parts.append(part)
    response = api.post("/api/v1/datasets", {"file": parts, "name": "two parts"})
    assert response.status_code == 201, response.content
    # Several files are one dataset whose mapping the user confirms on its page before training.
    assert response.json()["row_count"] == 4 and response.json()["confirmed"] is False


def test_bad_dataset_names_the_row_and_stores_nothing(api):
    from studio.datasets.models import Dataset

    upload = io.BytesIO(b'{"instruction": "q", "output": "a"}\n{"instruction": "q2", "output": "a2"}\n{not json\n')
    upload.name = "broken.jsonl"
    error = assert_error(api.post("/api/v1/datasets", {"file": upload}), 400, "file")
    assert error["row"] == 3 and "3" in error["message"]
    assert Dataset.objects.count() == 0
    assert_error(api.post("/api/v1/datasets", {"name": "no file"}), 400, "file")


def test_dataset_over_the_size_limit_is_413(api, settings):
    from studio.datasets.models import Dataset

    settings.UPLOAD_MAX_BYTES = 100
    upload = io.BytesIO(b"instruction,output\n" + b"question,answer\n" * 20)
    upload.name = "big.csv"
    assert_error(api.post("/api/v1/datasets", {"file": upload}), 413, "file")
    assert Dataset.objects.count() == 0


# ---- teams ---------------------------------------------------------------------


@pytest.mark.parametrize("url", ID_URLS)
def test_other_teams_ids_are_404_and_leak_nothing(client, outsider, ids, url):
    response = client.get(url.format(**ids), **bearer(api_token_create(user=outsider, name="m")[1]))
    assert_error(response, 404)
    assert b"secret-project" not in response.content and b"pairs" not in response.content


def test_other_team_cannot_cancel_or_train_on_our_data(client, outsider, ids, tiny_base_model):
    auth = bearer(api_token_create(user=outsider, name="m")[1])
    assert_error(client.post(f"/api/v1/fine_tuning/jobs/{ids['job']}/cancel", **auth), 404)
    body = {"model": tiny_base_model.pk, "training_file": ids["dataset"]}
    assert_error(post_json(client, "/api/v1/fine_tuning/jobs", body, **auth), 404, "training_file")
    for url in ("/api/v1/fine_tuning/jobs", "/api/v1/artifacts", "/api/v1/datasets"):
        assert client.get(url, **auth).json()["data"] == [], url
    assert Job.objects.get(pk=ids["job"]).status == "queued" and Job.objects.count() == 1


def test_team_parameter_picks_among_the_users_teams(client, member, ids, outsider):
    lab = Team.objects.create(name="Lab", slug="lab")
    Membership.objects.create(user=member, team=lab, role=Membership.Role.MEMBER)
    auth = bearer(api_token_create(user=member, name="all")[1])
    assert [j["id"] for j in client.get("/api/v1/fine_tuning/jobs", **auth).json()["data"]] == [ids["job"]]
    assert client.get("/api/v1/fine_tuning/jobs?team=lab", **auth).json()["data"] == []
    assert client.get(f"/api/v1/fine_tuning/jobs?team={lab.pk}", **auth).json()["data"] == []
    assert_error(client.get("/api/v1/fine_tuning/jobs?team=rivals", **auth), 404, "team")
    # A token tied to one team sees nothing of the user's other teams.
    lab_only = bearer(api_token_create(user=member, name="lab", team=lab)[1])
    assert client.get("/api/v1/fine_tuning/jobs", **lab_only).json()["data"] == []
    assert_error(client.get(f"/api/v1/fine_tuning/jobs/{ids['job']}", **lab_only), 404)
    assert_error(client.get("/api/v1/fine_tuning/jobs?team=default", **lab_only), 404, "team")


# ---- OpenAPI ---------------------------------------------------------------------


def _openapi_path(pattern: URLPattern) -> str:
    route = str(pattern.pattern)
    for converter in ("int:", "str:", "slug:", "path:"):
        route = route.replace(f"<{converter}", "{")
    return "/" + route.replace("<", "{").replace(">", "}")


def test_openapi_describes_every_route_and_method(api):
    schema = api.get("/api/v1/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    routes = [("", p) for p in api_urls.urlpatterns if p.name != "api-not-found"]
    routes += [("/v1", p) for p in openai_urls.urlpatterns if p.name != "openai-not-found"]
    assert len(routes) >= 16
    for prefix, pattern in routes:
        path = prefix + _openapi_path(pattern)
        assert path in schema["paths"], f"{path} is served but missing from openapi.py"
        operations = set(schema["paths"][path]) - {"servers"}  # /v1/ paths name their own root
        assert operations == {m.lower() for m in pattern.callback.api_methods}, path
    assert len(schema["paths"]) == len(routes), "openapi.py describes a path that is not served"
    for path, operations in schema["paths"].items():
        for name in ("job_id", "artifact_id", "dataset_id"):
            if "{" + name + "}" in path:
                for operation in operations.values():
                    assert name in [p["name"] for p in operation["parameters"]], (path, name)


def test_every_status_the_api_reports_is_in_the_schema():
    from studio.api.openapi import openapi_schema
    from studio.api.serializers import job_api_status

    documented = openapi_schema()["components"]["schemas"]["Job"]["properties"]["status"]["enum"]
    assert {job_api_status(Job(status=status)) for status in Job.Status.values} == set(documented)
    assert "cancelling" not in documented


def test_every_schema_reference_resolves(api):
    import json

    schema = api.get("/api/v1/openapi.json").json()
    text = json.dumps(schema)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        section, kind, name = ref.removeprefix("#/").split("/")
        assert name in schema[section][kind], ref


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_a_400_naming_the_field(api, dataset, tiny_base_model, value):
    body = json.dumps(job_body(dataset, tiny_base_model)).replace('"learning_rate": 0.001', f'"learning_rate": {value}')
    error = assert_error(api.post("/api/v1/fine_tuning/jobs", body, content_type="application/json"), 400,
                         "hyperparameters.learning_rate")
    assert "finite" in error["message"] and Job.objects.count() == 0


def test_a_body_over_the_limit_is_a_413_naming_the_limit(api, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
    response = api.post("/api/v1/fine_tuning/jobs", '{"name": "' + "x" * (2 * 1024 * 1024) + '"}',
                        content_type="application/json")
    error = assert_error(response, 413)
    assert "1.0\xa0MB limit" in error["message"] and Job.objects.count() == 0


def test_a_body_nested_too_deeply_is_a_400(api):
    assert_error(api.post("/api/v1/fine_tuning/jobs", "[" * 100_000 + "]" * 100_000,
                          content_type="application/json"), 400)
