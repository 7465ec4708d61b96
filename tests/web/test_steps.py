"""Merge, quantize, evaluate and chains of them, from the browser's side
(Django's test client; no worker: jobs stay queued or are finished by hand)."""

import json
import re

import pytest

from studio.artifacts.models import Artifact
from studio.artifacts.services import artifact_create
from studio.datasets.services import dataset_create_from_file
from studio.jobs.models import Job, JobEvent
from studio.jobs.selectors import job_output_dir
from studio.jobs.services import job_cancel, job_create_train, job_finish


@pytest.fixture
def dataset(member, team, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {w}.", "output": f"{w}!"}) + "\n"
                            for w in ("hello", "yes", "blue", "green")))
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="pairs.jsonl")


def train(member, team, dataset, base_model) -> Job:
    return job_create_train(user=member, team=team, dataset=dataset, base_model=base_model,
                            settings_values={"max_steps": 2, "batch_size": 2, "precision": "fp32"},
                            method_params={"rank": 4})


def finish_with_a_real_adapter(job: Job) -> Artifact:
    """What a worker would do: run the job's own config, record the adapter, finish."""
    from tuning.config import TrainConfig
    from tuning.events import MemorySink
    from tuning.train import run_train

    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    result = run_train(TrainConfig.from_dict(job.config), MemorySink())
    artifact = artifact_create(job=job, kind="adapter", path=result.output_path, metadata={"method": "lora"})
    job_finish(job_id=job.pk, status=Job.Status.SUCCEEDED, message="done")
    return artifact


def test_merge_page_lists_the_methods_and_only_the_teams_artifacts(member_client, member, team, dataset,
                                                                  tiny_base_model, outsider):
    mine = artifact_create(job=train(member, team, dataset, tiny_base_model), kind="adapter",
                           path=str(job_output_dir(1)), metadata={})
    page = member_client.get("/jobs/new/merge/")
    assert page.status_code == 200
    for label in ("Fold adapter into base", "TIES", "SLERP", "Fisher"):
        assert label in page.content.decode()
    assert f'value="{mine.pk}"' in page.content.decode()

    # Another team's artifact id is as good as none.
    from django.test import Client

    rival = Client()
    rival.force_login(outsider)
    response = rival.post("/jobs/new/merge/", {"method": "fold", "artifacts": [mine.pk]})
    assert response.status_code == 400 and "sources" in response.content.decode()
    assert not Job.objects.filter(kind=Job.Kind.MERGE).exists()


def test_a_merge_preset_fills_the_method_settings(member_client):
    page = member_client.get("/jobs/new/merge/?method=della&preset=sparse").content.decode()
    density = re.search(r'<input[^>]*name="param__density"[^>]*>', page)[0]
    assert 'value="0.3"' in density and 'aria-current="true"' in page
    for preset in ("Balanced", "Sparse", "Mergekit"):
        assert f">{preset}</a>" in page
    plain = member_client.get("/jobs/new/merge/?method=della").content.decode()
    assert 'value="0.5"' in re.search(r'<input[^>]*name="param__density"[^>]*>', plain)[0]
    normalize = re.search(r'<input[^>]*name="param__normalize"[^>]*>',
                          member_client.get("/jobs/new/merge/?method=dare_ties&preset=mergekit").content.decode())[0]
    assert "checked" not in normalize  # mergekit's default: off


def test_quantize_page_shows_gpu_schemes_disabled_with_the_reason(member_client, settings):
    settings.GPU_POOLS = []
    page = member_client.get("/jobs/new/quantize/").content.decode()
    assert "GGUF q8_0" in page and "int8 weight-only (torchao)" in page
    assert page.count("Unavailable: needs a CUDA GPU worker") == 2  # bitsandbytes 8-bit and NF4


def test_a_chain_waits_for_training_and_ends_when_training_is_cancelled(member_client, member, team, dataset,
                                                                       tiny_base_model):
    job = train(member, team, dataset, tiny_base_model)
    response = member_client.post(f"/jobs/{job.pk}/chain/", {"fold": "1", "scheme": "gguf_q8_0"},
                                  HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    fold, quantize = Job.objects.filter(kind__in=["merge", "quantize"]).order_by("pk")
    assert (fold.depends_on_id, quantize.depends_on_id) == (job.pk, fold.pk)
    assert fold.status == quantize.status == Job.Status.QUEUED
    waiting = JobEvent.objects.filter(job=fold, kind="status").last().data["message"]
    assert waiting.startswith(f"Waits for job #{job.pk}")
    # A merge step has no dataset of its own: its page says what it follows, not "None".
    facts = re.search(r'<p class="facts" id="job-facts">(.*?)</p>', member_client.get(f"/jobs/{fold.pk}/")
                      .content.decode(), re.S)[1]
    assert "None" not in facts and f"after job #{job.pk}" in facts

    job_cancel(job=job)
    fold.refresh_from_db(), quantize.refresh_from_db()
    assert fold.status == quantize.status == Job.Status.CANCELLED
    ended = JobEvent.objects.filter(job=fold, kind="status").last().data
    assert ended == {"status": "cancelled", "message": f"Not run: job #{job.pk}, the step before, cancelled"}


def test_when_training_succeeds_the_next_step_gets_its_adapter_and_is_queued(
        member, team, dataset, tiny_base_model, django_capture_on_commit_callbacks):
    from studio.jobs.services_steps import job_create_chain

    job = train(member, team, dataset, tiny_base_model)
    fold, quantize = job_create_chain(user=member, team=team, start=job,
                                      steps=[{"kind": "fold"}, {"kind": "quantize", "scheme": "safetensors_bf16"}])
    adapter = finish_with_a_real_adapter(job)

    fold.refresh_from_db()
    assert fold.status == Job.Status.QUEUED and fold.input_artifact_ids == [adapter.pk]
    assert fold.config["sources"][0]["path"] == adapter.path
    quantize.refresh_from_db()
    assert quantize.config["source_path"].startswith("(the output of job")  # still waiting for the fold
    # The exported model is named after its base and the training run (not its folder, "model").
    assert quantize.config["model_name"] == f"{tiny_base_model.name} - {job.name}" and job.name


def test_artifact_page_shows_lineage_and_serves_single_files_safely(member_client, member, team, dataset,
                                                                   tiny_base_model, outsider):
    job = train(member, team, dataset, tiny_base_model)
    adapter = finish_with_a_real_adapter(job)
    page = member_client.get(f"/artifacts/{adapter.pk}/").content.decode()
    assert "Lineage" in page and adapter.dataset_sha256[:12] in page and "adapter_config.json" in page
    single = member_client.get(f"/artifacts/{adapter.pk}/files/adapter_config.json")
    assert single.status_code == 200 and b"lora" in b"".join(single.streaming_content).lower()
    assert member_client.get(f"/artifacts/{adapter.pk}/files/../../../etc/passwd").status_code == 404
    assert member_client.get(f"/artifacts/{adapter.pk}/files/%2e%2e/%2e%2e/secret").status_code == 404

    from django.test import Client

    rival = Client()
    rival.force_login(outsider)
    for url in (f"/artifacts/{adapter.pk}/", f"/artifacts/{adapter.pk}/files/adapter_config.json"):
        assert rival.get(url).status_code == 404
    assert "No adapters" not in member_client.get("/artifacts/").content.decode()
    assert adapter.name not in rival.get("/artifacts/").content.decode()


def test_evaluate_refuses_a_task_the_dataset_cannot_serve(member_client, member, team, dataset, tiny_base_model):
    adapter = artifact_create(job=train(member, team, dataset, tiny_base_model), kind="adapter",
                              path=str(job_output_dir(1)), metadata={})
    response = member_client.post("/jobs/new/evaluate/", {"artifact": adapter.pk, "dataset": dataset.pk,
                                                         "task": "classify"})
    assert response.status_code == 400 and "usable for sft" in response.content.decode()
    assert not Job.objects.filter(kind=Job.Kind.EVALUATE).exists()


def test_playground_lists_the_teams_artifacts_and_picks_the_asked_one(member_client, member, team, dataset,
                                                                      tiny_base_model, outsider):
    adapter = artifact_create(job=train(member, team, dataset, tiny_base_model), kind="adapter",
                              path=str(job_output_dir(1)), metadata={})
    page = member_client.get(f"/playground/?artifact={adapter.pk}").content.decode()
    assert f'<option value="{adapter.pk}" selected>' in page and 'data-ws-path="/ws/playground/"' in page

    from django.test import Client

    rival = Client()
    rival.force_login(outsider)
    assert adapter.name not in rival.get("/playground/").content.decode()


def test_starting_and_downloading_are_in_the_audit_log(member_client, member, team, dataset, tiny_base_model):
    from studio.audit.models import AuditEntry

    response = member_client.post("/jobs/new/", {"dataset": dataset.pk, "base_model": tiny_base_model.pk,
                                                 "method": "lora", "max_steps": 2, "batch_size": 2})
    job = Job.objects.get()
    assert response.status_code == 302
    adapter = finish_with_a_real_adapter(job)
    b"".join(member_client.get(f"/artifacts/{adapter.pk}/files/adapter_config.json").streaming_content)
    entries = list(AuditEntry.objects.filter(team=team).order_by("at").values_list("action", "target_id"))
    assert entries == [("job.started", str(job.pk)), ("artifact.downloaded", str(adapter.pk))]


def test_a_run_whose_output_does_not_fold_offers_no_fold_and_refuses_one(member_client, member, team, dataset,
                                                                         tiny_base_model):
    # Prompt tuning learns virtual tokens: there is no weight update to fold into the base model.
    job = job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                           settings_values={"max_steps": 2, "batch_size": 2, "precision": "fp32",
                                            "method": "prompt_tuning"}, method_params={})
    page = member_client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="chain-form"' in page and 'name="fold"' not in page
    lora_page = member_client.get(f"/jobs/{train(member, team, dataset, tiny_base_model).pk}/").content.decode()
    assert 'name="fold"' in lora_page
    response = member_client.post(f"/jobs/{job.pk}/chain/", {"fold": "1"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 400 and "leaves nothing to fold" in response.content.decode()
    assert not Job.objects.filter(kind="merge").exists()


def test_a_mola_run_offers_no_fold_and_its_chain_refuses_quantizing_naming_mola(member_client, member, team, dataset,
                                                                              tiny_base_model):
    # MoLA's routers pick experts per token: there is no single weight per layer to fold, so nothing to quantize.
    job = job_create_train(user=member, team=team, dataset=dataset, base_model=tiny_base_model,
                           settings_values={"max_steps": 2, "batch_size": 2, "precision": "fp32", "method": "mola"},
                           method_params={"experts": "2,4"})
    assert 'name="fold"' not in member_client.get(f"/jobs/{job.pk}/").content.decode()
    response = member_client.post(f"/jobs/{job.pk}/chain/", {"scheme": "safetensors_bf16"}, HTTP_HX_REQUEST="true")
    page = response.content.decode()
    assert response.status_code == 400 and "MoLA (mixture of LoRA experts) run" in page
    assert "adapter cannot be quantized" in page
    assert not Job.objects.filter(kind="quantize").exists()


def test_the_quantize_page_says_which_schemes_cannot_write_the_artifacts_family(member_client, member, team, dataset,
                                                                              tiny_base_model, media_root):
    import json

    merged = media_root / "jobs" / "77" / "model"
    merged.mkdir(parents=True)
    (merged / "config.json").write_text(json.dumps({"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"]}))
    job = train(member, team, dataset, tiny_base_model)
    artifact = artifact_create(job=job, kind="model", path=str(merged), metadata={})
    page = member_client.get(f"/jobs/new/quantize/?artifact={artifact.pk}").content.decode()
    refusals = re.findall(r'id="scheme-(gguf[^"]*)" value="[^"]+" disabled', page)
    assert set(refusals) >= {"gguf_f16", "gguf_q8_0"} and "gpt_neox" in page
    adapter = artifact_create(job=train(member, team, dataset, tiny_base_model), kind="adapter",
                              path=str(media_root / "jobs" / "78"), metadata={})
    page = member_client.get(f"/jobs/new/quantize/?artifact={adapter.pk}").content.decode()
    assert not re.findall(r'id="scheme-gguf_q8_0" value="[^"]+" disabled', page)  # a Llama: its base's config


def test_the_quantize_pages_report_settings_are_stored_and_refusals_name_the_field(member_client, member, team,
                                                                                  dataset, tiny_base_model,
                                                                                  media_root):
    import shutil

    path = shutil.copytree(tiny_base_model.ref, media_root / "jobs" / "90" / "model")
    model = artifact_create(job=train(member, team, dataset, tiny_base_model), kind="model", path=str(path),
                            metadata={})
    page = member_client.get(f"/jobs/new/quantize/?artifact={model.pk}").content.decode()
    boxes = re.findall(r'<input type="checkbox" name="(report_\w+)"([^>]*)>', page)
    assert {name: " checked" in rest for name, rest in boxes} == {
        "report_answers": False, "report_agreement": True, "report_speed": False}  # the fast default
    assert "about " in page and " s for this model" in page  # the estimate before submitting

    refused = member_client.post("/jobs/new/quantize/", {"artifact": model.pk, "scheme": "gguf_q8_0",
                                                         "report_answers": "on", "eval_rows": "0"})
    assert refused.status_code == 400 and not Job.objects.filter(kind="quantize").exists()
    assert re.search(r"<strong>eval_rows:</strong> Ensure this value is greater than or equal to 1",
                     refused.content.decode())

    # a box left unticked is a part switched off
    response = member_client.post("/jobs/new/quantize/", {"artifact": model.pk, "scheme": "gguf_q8_0",
                                                          "report_speed": "on", "eval_rows": "4",
                                                          "max_new_tokens": "8"})
    assert response.status_code == 302, response.content.decode()[:2000]
    config = Job.objects.get(kind="quantize").config
    assert (config["report_answers"], config["report_agreement"], config["report_speed"]) == (False, False, True)
    assert (config["eval_rows"], config["max_new_tokens"], config["report"]) == (4, 8, True)


def test_a_delta_schemes_settings_and_paper_are_on_the_quantize_page(member_client, member, team, dataset,
                                                                     tiny_base_model, media_root):
    adapter_dir = media_root / "jobs" / "91" / "adapter"
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    adapter = artifact_create(job=train(member, team, dataset, tiny_base_model), kind="adapter",
                              path=str(adapter_dir), metadata={})
    page = member_client.get(f"/jobs/new/quantize/?artifact={adapter.pk}").content.decode()
    density = re.search(r'<input[^>]*name="scheme_param__compeft__density"[^>]*>', page)[0]
    assert 'value="0.1"' in density and 'href="https://arxiv.org/abs/2311.13171"' in page

    refused = member_client.post("/jobs/new/quantize/", {"artifact": adapter.pk, "scheme": "compeft",
                                                         "scheme_param__compeft__density": "2"})
    assert refused.status_code == 400 and not Job.objects.filter(kind="quantize").exists()
    assert "<strong>scheme_params.density:</strong> must be a number above 0 and at most 1" in refused.content.decode()

    response = member_client.post("/jobs/new/quantize/", {"artifact": adapter.pk, "scheme": "compeft",
                                                          "scheme_param__compeft__density": "0.3",
                                                          "scheme_param__gguf_q8_0__density": "9"})
    assert response.status_code == 302, response.content.decode()[:2000]
    config = Job.objects.get(kind="quantize").config
    assert config["scheme_params"] == {"density": 0.3, "alpha": 1.0, "alpha_grid": ""}  # the chosen scheme's only
    assert config["base_model"] == tiny_base_model.ref  # the change is measured against the adapter's base

    # Presets fill the scheme's inputs and say what they trade; an α search needs a validation split.
    page = member_client.get(f"/jobs/new/quantize/?artifact={adapter.pk}&scheme=compeft&preset=faithful")
    page = page.content.decode()
    assert 'value="0.3"' in re.search(r'<input[^>]*name="scheme_param__compeft__density"[^>]*>', page)[0]
    assert 'aria-current="true"' in page and "keeps 30%" in page and "paper&#x27;s 1/16 of fp16" in page
    search = {"artifact": adapter.pk, "scheme": "compeft", "scheme_param__compeft__alpha_grid": "0.5, 1, 2"}
    refused = member_client.post("/jobs/new/quantize/", search)
    assert refused.status_code == 400 and "validation_dataset_path:</strong> ComPEFT" in refused.content.decode()
    assert member_client.post("/jobs/new/quantize/", {**search, "validation_dataset": dataset.pk}).status_code == 302
    config = Job.objects.filter(kind="quantize").latest("pk").config
    assert config["validation_dataset_path"] == dataset.file.path
    assert config["scheme_params"]["alpha_grid"] == "0.5, 1, 2"


def test_an_atlas_merge_asks_for_a_dataset_and_its_job_page_shows_the_learned_coefficients(
        member_client, member, team, dataset, tiny_base_model):
    from tuning.merge import run_merge
    from tuning.merge.config import MergeConfig
    from worker.sink import JobSink

    adapter = finish_with_a_real_adapter(train(member, team, dataset, tiny_base_model))
    form = member_client.get("/jobs/new/merge/?method=atlas").content.decode()
    assert "aTLAS (learned coefficients) learns its coefficients on data" in form and 'name="dataset"' in form
    settings = {"method": "atlas", "artifacts": [adapter.pk], "param__steps": 2, "param__rows": 4}
    refused = member_client.post("/jobs/new/merge/", settings)
    assert refused.status_code == 400 and "learns its coefficients on data: pick a dataset" in refused.content.decode()

    response = member_client.post("/jobs/new/merge/", {**settings, "dataset": dataset.pk})
    job = Job.objects.get(kind=Job.Kind.MERGE)
    assert response.status_code == 302 and job.config["method_params"]["steps"] == 2
    assert job.config["dataset_path"] == dataset.file.path
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    run_merge(MergeConfig.from_dict(job.config), JobSink(job))  # what the worker does
    job_finish(job_id=job.pk, status=Job.Status.SUCCEEDED, message="done")
    page = member_client.get(f"/jobs/{job.pk}/").content.decode()
    section = re.search(r'<section class="card" id="atlas-coefficients">(.*?)</section>', page, re.S)[1]
    assert "after 2 steps" in section and "model.layers.0.self_attn.q_proj.weight" in section
    assert section.count("<tr>") == 1 + len(job.artifacts.get().metadata["atlas"]["coefficients"])
