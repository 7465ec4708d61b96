"""/api/v1/merges, /quantizations, /evaluations and a dataset's mapping,
diet steps and analyses: what the pages start, started by a script, with
the pages' own checks (Django's test client; no worker: jobs stay queued)."""

import pytest

from studio.accounts.models import Membership
from studio.accounts.services import api_token_create, user_create
from studio.datasets.services import dataset_create_from_file
from studio.jobs.models import Job
from tests.web.test_steps import dataset, finish_with_a_real_adapter, train  # noqa: F401 (dataset: a fixture)


@pytest.fixture
def api(client, member):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_token_create(user=member, name='script')[1]}"
    return client


@pytest.fixture
def adapter(member, team, dataset, tiny_base_model):  # noqa: F811 (the imported fixture)
    return finish_with_a_real_adapter(train(member, team, dataset, tiny_base_model))


def post(client, url, body):
    return client.post(url, body, content_type="application/json")


def error(response, status: int, field: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()["error"]
    assert body["field"] == field, body
    return body


def test_a_fold_is_queued_and_its_answer_names_no_server_path(api, adapter):
    response = post(api, "/api/v1/merges", {"artifacts": [adapter.pk], "method": "fold", "name": "folded"})
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["kind"] == "merge" and job["status"] == "queued" and job["name"] == "folded"
    assert "/" not in str(job["hyperparameters"])  # sources, output and base paths stay on the server
    assert Job.objects.get(pk=job["id"]).input_artifact_ids == [adapter.pk]


def test_merge_refusals_are_the_pages_own(api, adapter, outsider):
    unknown = error(post(api, "/api/v1/merges", {"artifacts": [adapter.pk], "method": "soup"}), 400, "method")
    assert unknown["message"].startswith("method: unknown merge method 'soup'; choose one of fold")
    typed = error(post(api, "/api/v1/merges", {"artifacts": [adapter.pk, adapter.pk], "method": "lora_ties",
                                               "params": {"density": "lots"}}), 400, "params.density")
    assert "number" in typed["message"]
    error(post(api, "/api/v1/merges", {"artifacts": [adapter.pk], "method": "fold", "params": {"densty": 1}}),
          400, "params.densty")
    error(post(api, "/api/v1/merges", {"artifacts": [adapter.pk], "weights": [1, 2]}), 400, "weights")
    error(post(api, "/api/v1/merges", {"artifacts": [adapter.pk], "colour": "red"}), 400, "colour")
    assert not Job.objects.filter(kind=Job.Kind.MERGE).exists()


def test_another_teams_artifact_is_not_found_and_a_viewer_may_not_start(client, api, adapter, outsider, team):
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_token_create(user=outsider, name='rival')[1]}"
    response = post(client, "/api/v1/quantizations", {"artifact": adapter.pk, "scheme": "gguf_q8_0"})
    assert response.status_code == 404 and response.json()["error"]["field"] == "artifact"
    viewer = user_create(username="vera", password="pw-vera-12345", team=team, role=Membership.Role.VIEWER)
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {api_token_create(user=viewer, name='v')[1]}"
    assert post(client, "/api/v1/evaluations", {"artifact": adapter.pk, "dataset": 1}).status_code == 403


def test_quantize_and_evaluate_are_queued_or_refused_by_the_services(api, adapter, dataset):  # noqa: F811
    bad = error(post(api, "/api/v1/quantizations", {"artifact": adapter.pk, "scheme": "zip"}), 400, "scheme")
    assert "choose one of" in bad["message"]
    queued = post(api, "/api/v1/quantizations", {"artifact": adapter.pk, "scheme": "gguf_q8_0",
                                                 "eval_dataset": dataset.pk, "prompts": ["Say hi."]})
    assert queued.status_code == 201 and queued.json()["kind"] == "quantize", queued.content
    wrong_task = error(post(api, "/api/v1/evaluations", {"artifact": adapter.pk, "dataset": dataset.pk,
                                                         "settings": {"task": "classify"}}), 400, "settings.task")
    assert "pick one of those tasks" in wrong_task["message"]
    error(post(api, "/api/v1/evaluations", {"artifact": adapter.pk, "dataset": dataset.pk,
                                            "settings": {"max_rows": "all"}}), 400, "settings.max_rows")
    error(post(api, "/api/v1/evaluations", {"artifact": adapter.pk, "dataset": dataset.pk,
                                            "settings": {"max_samples": 3}}), 400, "settings.max_samples")
    evaluation = post(api, "/api/v1/evaluations", {"artifact": adapter.pk, "dataset": dataset.pk})
    assert evaluation.status_code == 201 and evaluation.json()["kind"] == "evaluate"


# ---- a dataset's mapping, diet steps and analyses ----------------------------

@pytest.fixture
def unsure(member, team, tmp_path):
    data = tmp_path / "odd.csv"
    data.write_text("question,reply\nq1,a1\nq2,a2\n")
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="odd.csv")


def test_a_mapping_is_confirmed_as_on_the_page(api, unsure):
    assert not unsure.confirmed
    missing = error(post(api, f"/api/v1/datasets/{unsure.pk}/mapping",
                         {"schema": "alpaca", "mapping": {"instruction": "question"}}), 400, "mapping.output")
    assert missing["message"] == "mapping.output: This field is required."  # the page's form says the same
    absent = error(post(api, f"/api/v1/datasets/{unsure.pk}/mapping",
                        {"schema": "alpaca", "mapping": {"instruction": "question", "output": "answer"}}),
                   400, "mapping.output")
    assert "answer" in absent["message"]
    error(post(api, f"/api/v1/datasets/{unsure.pk}/mapping", {"schema": "poetry", "mapping": {}}), 400, "schema")
    queued = post(api, f"/api/v1/datasets/{unsure.pk}/mapping",
                  {"schema": "alpaca", "mapping": {"instruction": "question", "output": "reply"}})
    assert queued.status_code == 202, queued.content
    run = queued.json()
    assert run["operation"] == "map_columns" and run["status"] == "queued" and run["results"] == []
    assert api.get(f"/api/v1/fine_tuning/jobs/{run['job']}").json()["kind"] == "diet"


def test_diet_steps_and_analyses_check_as_the_forms_do(api, dataset, tiny_base_model):  # noqa: F811
    url = f"/api/v1/datasets/{dataset.pk}/operations"
    error(post(api, url, {"operation": "shrink"}), 400, "operation")
    error(post(api, url, {"operation": "random_subsample", "params": {"n": 0}}), 400, "params.n")
    error(post(api, url, {"operation": "random_subsample", "params": {"size": 2}}), 400, "params.size")
    tokens = error(post(api, url, {"operation": "length_filter", "params": {"unit": "tokens", "max": 10}}),
                   400, "base_model")
    assert "whose tokens to count" in tokens["message"]
    queued = post(api, url, {"operation": "random_subsample", "params": {"n": 2, "seed": 3}})
    assert queued.status_code == 202, queued.content
    run = queued.json()
    assert run["parameters"] == {"n": 2, "seed": 3}
    assert api.get(url).json()["data"][0]["id"] == run["id"]
    assert api.get(f"{url}/{run['id']}").json()["operation"] == "random_subsample"

    analyses = f"/api/v1/datasets/{dataset.pk}/analyses"
    error(post(api, analyses, {"base_model": tiny_base_model.pk, "max_length": 2}), 400, "max_length")
    analysis = post(api, analyses, {"base_model": tiny_base_model.pk, "max_length": 64})
    assert analysis.status_code == 202 and analysis.json()["status"] == "queued"
    assert api.get(f"{analyses}/{analysis.json()['id']}").json()["max_length"] == 64


def test_an_unconfirmed_version_cannot_be_analysed(api, unsure, tiny_base_model):
    refused = error(post(api, f"/api/v1/datasets/{unsure.pk}/analyses", {"base_model": tiny_base_model.pk}),
                    400, "dataset")
    assert "Confirm the column mapping first" in refused["message"]


def test_the_report_parts_are_settings_of_a_quantization_and_refusals_name_them(api, adapter):
    url = "/api/v1/quantizations"
    error(post(api, url, {"artifact": adapter.pk, "scheme": "gguf_q8_0", "report": {"answers": "maybe"}}),
          400, "report.answers")
    error(post(api, url, {"artifact": adapter.pk, "scheme": "gguf_q8_0", "report": {"eval_rows": 0}}),
          400, "report.eval_rows")
    error(post(api, url, {"artifact": adapter.pk, "scheme": "gguf_q8_0", "report": {"colour": 1}}),
          400, "report.colour")
    error(post(api, url, {"artifact": adapter.pk, "scheme": "gguf_q8_0", "report": "yes"}), 400, "report")
    assert not Job.objects.filter(kind=Job.Kind.QUANTIZE).exists()

    parts = post(api, url, {"artifact": adapter.pk, "scheme": "gguf_q8_0",
                            "report": {"answers": False, "speed": True, "eval_rows": 8}})
    assert parts.status_code == 201, parts.content
    config = Job.objects.get(pk=parts.json()["id"]).config
    assert (config["report_answers"], config["report_agreement"], config["report_speed"], config["eval_rows"]) == \
        (False, True, True, 8)
    none = post(api, url, {"artifact": adapter.pk, "scheme": "gguf_q8_0", "report": False})
    assert none.status_code == 201 and Job.objects.get(pk=none.json()["id"]).config["report"] is False


def test_a_schemes_own_settings_go_through_the_api_and_are_checked_by_the_scheme(api, adapter):
    url = "/api/v1/quantizations"
    error(post(api, url, {"artifact": adapter.pk, "scheme": "compeft", "scheme_params": [0.1]}), 400, "scheme_params")
    error(post(api, url, {"artifact": adapter.pk, "scheme": "compeft", "scheme_params": {"density": 0}}),
          400, "scheme_params.density")
    error(post(api, url, {"artifact": adapter.pk, "scheme": "gguf_q8_0", "scheme_params": {"alpha": 2}}),
          400, "scheme_params.alpha")  # a scheme without settings takes none
    assert not Job.objects.filter(kind=Job.Kind.QUANTIZE).exists()
    started = post(api, url, {"artifact": adapter.pk, "scheme": "compeft", "scheme_params": {"alpha": 2}})
    assert started.status_code == 201, started.content
    assert Job.objects.get(pk=started.json()["id"]).config["scheme_params"] == {"density": 0.1, "alpha": 2,
                                                                                 "alpha_grid": ""}


def test_merge_and_quantize_refuse_a_bottleneck_adapter_naming_it_on_the_page_and_in_the_api(
        api, member_client, member, team, dataset, tiny_base_model):  # noqa: F811
    from studio.jobs.services import job_create_train

    job = job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                           settings_values={"max_steps": 1, "batch_size": 2, "precision": "fp32",
                                            "method": "bottleneck"}, method_params={"variant": "houlsby"})
    adapter = finish_with_a_real_adapter(job)
    merged = error(post(api, "/api/v1/merges", {"artifacts": [adapter.pk], "method": "fold"}), 400, "artifacts.0")
    assert "is a Houlsby bottleneck adapter" in merged["message"] and "cannot be folded" in merged["message"]
    quantized = error(post(api, "/api/v1/quantizations", {"artifact": adapter.pk, "scheme": "gguf_q8_0"}), 400,
                      "artifact")
    assert "Houlsby bottleneck adapter" in quantized["message"] and "quantize or export the base model" in \
        quantized["message"]
    page = member_client.post("/jobs/new/merge/", {"method": "task_arithmetic", "artifacts": [adapter.pk]})
    assert page.status_code == 400 and "is a Houlsby bottleneck adapter" in page.content.decode()
    page = member_client.post("/jobs/new/quantize/", {"artifact": adapter.pk, "scheme": "gguf_q8_0"})
    assert page.status_code == 400 and "Houlsby bottleneck adapter" in page.content.decode()
    assert not Job.objects.filter(kind__in=[Job.Kind.MERGE, Job.Kind.QUANTIZE]).exists()
