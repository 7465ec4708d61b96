"""The new-job page as a method picker: groups, per-method fields, presets,
the trainable-parameter estimate and GPU-only methods."""

import dataclasses
import re
from html import escape
from html.parser import HTMLParser

import pytest

from studio.catalog.services import base_model_register
from studio.datasets.services import dataset_create_from_file
from studio.jobs.forms import NO_GPU
from studio.jobs.models import Job
from tuning.fields import field_specs
from tuning.methods import GROUPS, METHODS
from worker.estimates import base_model_facts

FIELDS = "/jobs/new/method-fields/"
ESTIMATE = "/jobs/new/estimate/"


def estimate(client, query) -> str:
    """The estimate partial as the form gets it: the first answer asks a worker to count (and asks again each
    second); a worker counts (here the worker's own function, in this process); the next answer shows it."""
    pending = client.get(ESTIMATE, query).content.decode()
    assert "Counting trainable parameters on a worker" in pending and 'hx-trigger="load delay:1s"' in pending
    assert base_model_facts(int(query["base_model"])) >= 1
    return client.get(ESTIMATE, query).content.decode()
GPU_ONLY = [name for name, m in METHODS.items() if m.needs_cuda]


class FormValues(HTMLParser):
    """What a browser would send for the rendered fields, every field's name, and the disabled radios."""

    def __init__(self, page: str):
        super().__init__()
        self.values, self.names, self.disabled, self._select = {}, set(), set(), None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("input", "select") and a.get("name"):
            self.names.add(a["name"])
        if tag == "input" and a.get("name"):
            if "disabled" in a:
                self.disabled.add(a.get("value"))
            elif a.get("type") not in ("checkbox", "radio") or "checked" in a:
                self.values[a["name"]] = a.get("value", "on")
        elif tag == "select":
            self._select = a.get("name")
        elif tag == "option" and self._select and "selected" in a:
            self.values[self._select] = a["value"]

    def handle_endtag(self, tag):
        if tag == "select":
            self._select = None


def values(response) -> dict:
    assert response.status_code == 200, response.content.decode()[:2000]
    return FormValues(response.content.decode()).values


@pytest.fixture
def dataset(member, team, tmp_path):
    data = tmp_path / "pairs.csv"
    data.write_text("instruction,output\nq1,a1\nq2,a2\n")
    return dataset_create_from_file(team=team, user=member, source_path=data, filename="pairs.csv")


@pytest.fixture
def gpu_pool(settings):
    settings.GPU_POOLS = ["gpu"]


def test_page_lists_every_method_by_group_with_description_and_paper(member_client):
    page = member_client.get("/jobs/new/").content.decode()
    groups = {m.group for m in METHODS.values()}
    for key, heading in GROUPS.items():
        assert (f">{escape(heading)}</h3>" in page) == (key in groups), heading
    for method in METHODS.values():
        assert f'name="method" value="{method.name}"' in page
        assert f"<strong>{escape(method.label)}</strong>" in page and escape(method.description) in page
        assert f'href="{method.paper}"' in page
    assert values(member_client.get("/jobs/new/"))["method"] == "lora"


def test_lora_fields_basic_and_advanced(member_client):
    page = member_client.get(FIELDS, {"method": "lora"}).content.decode()
    basic, advanced = page.split("<summary>Advanced settings</summary>")
    assert ">LoRA rank</label>" in basic and ">LoRA alpha</label>" in basic and ">Learning rate</label>" in basic
    assert 'name="method__dropout"' in advanced and 'name="method__target_modules"' in advanced
    assert values(member_client.get(FIELDS, {"method": "lora"}))["method__rank"] == "16"


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_gets_exactly_its_own_fields(member_client, gpu_pool, name):
    response = member_client.get(FIELDS, {"method": name, "task": "sft"})
    fields = FormValues(response.content.decode())
    own = {"method__" + spec.name for spec in field_specs(METHODS[name].params)}
    assert {key for key in fields.names if key.startswith("method__")} == own
    assert fields.values["method"] == name and fields.values["fields_for"] == name


def test_changing_method_keeps_training_settings_but_not_the_old_methods_parameters(member_client):
    typed = {"method": "lora", "fields_for": "lora", "learning_rate": "0.005", "method__rank": "7", "task": "sft"}
    assert values(member_client.get(FIELDS, typed))["method__rank"] == "7"  # task changed: parameters stay
    redrawn = values(member_client.get(FIELDS, {**typed, "fields_for": "some_other_method"}))
    assert redrawn["method__rank"] == "16" and redrawn["learning_rate"] == "0.005"
    assert "method__use_dora" not in redrawn  # an unchecked box stays unchecked


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.presets])
def test_presets_fill_the_fields(member_client, gpu_pool, name):
    method = METHODS[name]
    for preset, settings_ in method.presets.items():
        sent = values(member_client.get(FIELDS, {"method": name, "fields_for": name, "max_steps": "999",
                                                 "preset": preset}))
        expected = {**{k: v for k, v in settings_.items() if k != "method_params"},
                    **{"method__" + k: v for k, v in settings_.get("method_params", {}).items()}}
        for key, value in expected.items():
            shown = key in sent if isinstance(value, bool) else type(value)(sent[key])
            assert shown == value, (preset, key)
        if any("max_steps" in p for p in method.presets.values()) and "max_steps" not in settings_:
            assert sent["max_steps"] == "0", "another preset's step limit must not survive"


def test_preset_without_javascript_is_a_link_to_the_page(member_client):
    page = member_client.get("/jobs/new/").content.decode()
    assert 'href="/jobs/new/?method=lora&amp;task=sft&amp;preset=quick"' in page
    quick = METHODS["lora"].presets["quick"]
    sent = values(member_client.get("/jobs/new/", {"method": "lora", "task": "sft", "preset": "quick"}))
    assert int(sent["method__rank"]) == quick["method_params"]["rank"]


def test_estimate_matches_peft_on_the_tiny_model(member_client, tiny_base_model, tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    page = estimate(member_client, {"base_model": tiny_base_model.pk, "method": "lora", "task": "sft",
                                    "method__rank": "4", "method__alpha": "8"})
    assert f'title="{trainable:,} of {total:,} parameters"' in page
    assert f"trainable of {total / 1e6:.1f} M (" in page and page.count("%") == 1


def test_estimate_explains_a_bad_base_model_or_parameter(member_client, tiny_base_model, db):
    missing = base_model_register(name="gone", source="local", ref="/nonexistent/model-dir")
    page = estimate(member_client, {"base_model": missing.pk, "method": "lora"})
    assert "estimate unavailable: base model directory not found: /nonexistent/model-dir" in page
    bad_rank = member_client.get(ESTIMATE, {"base_model": tiny_base_model.pk, "method": "lora", "method__rank": "0"})
    assert "estimate unavailable: LoRA rank: Ensure this value is greater than or equal to 1." in \
        bad_rank.content.decode()


@pytest.mark.skipif(not GPU_ONLY, reason="no GPU-only method in the table")
@pytest.mark.parametrize("name", GPU_ONLY)
def test_gpu_only_methods_are_disabled_without_a_gpu_pool(member_client, dataset, tiny_base_model, settings, name):
    settings.GPU_POOLS = []
    page = member_client.get("/jobs/new/").content.decode()
    assert name in FormValues(page).disabled and NO_GPU[1:] in page
    asked = member_client.get("/jobs/new/", {"method": name}).content.decode()
    assert "Showing LoRA instead." in asked and FormValues(asked).values["method"] == "lora"
    refused = member_client.post("/jobs/new/", {"dataset": dataset.pk, "base_model": tiny_base_model.pk,
                                                "method": name, "task": "sft"})
    assert refused.status_code == 400 and not Job.objects.exists()
    assert f"{METHODS[name].label} is unavailable: {NO_GPU}." in refused.content.decode()
    settings.GPU_POOLS = ["gpu"]
    assert name not in FormValues(member_client.get("/jobs/new/").content.decode()).disabled


def test_methods_without_the_chosen_task_are_disabled(member_client, monkeypatch):
    monkeypatch.setitem(METHODS, "sft_only", dataclasses.replace(METHODS["lora"], name="sft_only",
                                                                 label="SFT only", tasks=("sft",)))
    assert "sft_only" not in FormValues(member_client.get(FIELDS, {"task": "sft"}).content.decode()).disabled
    page = member_client.get(FIELDS, {"task": "classify", "method": "sft_only"}).content.decode()
    assert "sft_only" in FormValues(page).disabled and "not for the classify task (supports sft)" in page
    assert FormValues(page).values["method"] == "lora"


def test_plain_post_creates_the_job(member_client, dataset, tiny_base_model):
    response = member_client.post("/jobs/new/", {"dataset": dataset.pk, "base_model": tiny_base_model.pk,
                                                 "method": "lora", "task": "sft", "fields_for": "lora",
                                                 "max_steps": 3, "method__rank": 2})
    job = Job.objects.get()
    assert response.status_code == 302 and job.config["task"] == "sft"
    assert job.config["method_params"]["rank"] == 2 and job.config["method_params"]["use_dora"] is False


def test_the_form_offers_galore_shows_what_it_saves_and_refuses_it_for_an_adapter(member_client, dataset,
                                                                                   tiny_base_model):
    query = {"base_model": tiny_base_model.pk, "method": "full", "task": "sft"}
    galore = estimate(member_client, {**query, "optimizer": "galore", "galore_rank": "4"})
    assert "GaLore saves ≈ 0.1 MiB of AdamW's optimizer state" in galore  # 18k block weights
    assert "GaLore saves" not in member_client.get(ESTIMATE, query).content.decode()
    page = member_client.get("/jobs/new/", {"method": "full"}).content.decode()
    assert 'value="galore"' in page and 'name="galore_rank"' in page

    post = {"dataset": dataset.pk, "base_model": tiny_base_model.pk, "task": "sft", "max_steps": 3,
            "optimizer": "galore"}
    refused = member_client.post("/jobs/new/", {**post, "method": "lora", "fields_for": "lora"})
    assert refused.status_code == 400 and "LoRA trains an adapter" in refused.content.decode()
    assert member_client.post("/jobs/new/", {**post, "method": "full", "fields_for": "full"}).status_code == 302
    assert Job.objects.get().config["optimizer"] == "galore"


@pytest.mark.parametrize("url", [FIELDS, ESTIMATE])
def test_new_endpoints_need_login(client, url):
    response = client.get(url, {"method": "lora"})
    assert response.status_code == 302 and response.url.startswith("/accounts/login/")


def test_other_teams_datasets_never_show(client, outsider, dataset, tiny_base_model):
    client.force_login(outsider)
    for url in ["/jobs/new/", FIELDS]:
        page = client.get(url, {"dataset": dataset.pk, "method": "lora"}).content.decode()
        assert f">{dataset.name}</option>" not in page and f'<option value="{dataset.pk}" selected>' not in page
    refused = client.post("/jobs/new/", {"dataset": dataset.pk, "base_model": tiny_base_model.pk, "method": "lora"})
    assert refused.status_code == 400 and not Job.objects.exists()


def test_preflight_says_when_a_run_will_not_fit_the_pools_workers_and_what_would(member_client, tiny_base_model,
                                                                               settings):
    from studio.workers.services import worker_register

    query = {"base_model": tiny_base_model.pk, "method": "lora", "task": "sft", "batch_size": "64",
             "max_length": "2048"}
    page = estimate(member_client, query)
    assert "needs ≈" in page and "Will not fit" not in page  # no worker registered: nothing to compare with

    # A 4 GiB worker on the default pool. LoRA's loss is fused with the head
    # (tuning.loss), so no batch-wide logits: 64 rows of 2048 tokens need
    # ~11 GiB, 16 rows ~3.6 GiB.
    worker_register(name="small@box", pool=settings.DEFAULT_DEVICE_POOL, hostname="box", pid=1,
                    device="CPU: test", device_memory_mib=4096)
    page = member_client.get(ESTIMATE, query).content.decode()
    assert "of 4 GiB on pool default" in page
    assert "Will not fit on pool default. Try: batch size 16 (raise gradient accumulation" in page
    # Prompt tuning takes the model's own loss: the tiny model's 49k-token
    # logits for every position then dominate (16 rows ~12.6 GiB, 4 rows ~3.9).
    prompt = estimate(member_client, {**query, "method": "prompt_tuning"})
    assert "Will not fit on pool default. Try: batch size 4 (raise gradient accumulation" in prompt

    roomy = {**query, "batch_size": "1", "max_length": "64"}
    assert "Will not fit" not in member_client.get(ESTIMATE, roomy).content.decode()


def test_a_run_no_worker_of_its_pool_can_hold_is_refused_with_what_would_fit(member_client, dataset,
                                                                             tiny_base_model, settings):
    from studio.workers.services import worker_register

    big = {"dataset": dataset.pk, "base_model": tiny_base_model.pk, "method": "lora", "task": "sft",
           "fields_for": "lora", "batch_size": 64, "max_length": 2048, "max_steps": 1}
    estimate(member_client, {key: str(value) for key, value in big.items()})  # a worker counts the parameters
    worker_register(name="small@box", pool=settings.DEFAULT_DEVICE_POOL, hostname="box", pid=1,
                    device="CPU: test", device_memory_mib=4096)
    refused = member_client.post("/jobs/new/", big)
    assert refused.status_code == 400 and not Job.objects.exists()
    page = refused.content.decode()
    assert "more than the 4 GiB of the largest worker of pool default; try: batch size 16" in page
    assert member_client.post("/jobs/new/", {**big, "batch_size": 16}).status_code == 302


def test_ladder_side_tunings_estimate_keeps_fewer_activations_than_loras(member_client, tiny_base_model):
    # The side network's backbone runs without gradients: the estimate keeps none of its layers' activations.
    query = {"base_model": tiny_base_model.pk, "task": "sft", "batch_size": "8", "max_length": "2048"}
    side = estimate(member_client, {**query, "method": "ladder"})
    lora = member_client.get(ESTIMATE, {**query, "method": "lora"}).content.decode()  # counted with the defaults

    def activations(page) -> float:
        return float(re.search(r"activations ([\d.]+) GiB", page).group(1))

    assert activations(side) < 0.9 * activations(lora)
    assert "no backprop through the model saves ≈" in side and "no backprop" not in lora


def test_the_estimate_of_a_cuda_method_is_for_the_gpu_pool(member_client, tiny_base_model, gpu_pool, settings):
    from studio.workers.services import worker_register

    worker_register(name="gpu@box", pool="gpu", hostname="box", pid=1, device="GPU: test", device_memory_mib=8192)
    worker_register(name="cpu@box", pool=settings.DEFAULT_DEVICE_POOL, hostname="box", pid=2, device="CPU: test",
                    device_memory_mib=4096)
    query = {"base_model": tiny_base_model.pk, "task": "sft"}
    assert "of 8 GiB on pool gpu" in estimate(member_client, {**query, "method": "qlora"})
    assert "of 4 GiB on pool default" in member_client.get(ESTIMATE, {**query, "method": "lora"}).content.decode()


def test_the_estimate_never_builds_a_model_in_the_web_process(member_client, tiny_base_model, settings):
    # Registering asks a worker for the figures the form opens with; until it has counted, the form waits.
    assert set(tiny_base_model.facts["pending"]) and not tiny_base_model.facts.get("counts")
    query = {"base_model": tiny_base_model.pk, "method": "lora", "task": "sft"}
    page = member_client.get(ESTIMATE, query).content.decode()
    assert "Counting trainable parameters on a worker" in page and '"waited": "1"' in page
    # Asking again does not queue the same count twice.
    member_client.get(ESTIMATE, {**query, "waited": "1"})
    pending = type(tiny_base_model).objects.get(pk=tiny_base_model.pk).facts["pending"]
    assert len(pending) == 2  # LoRA's defaults for sft and classify, asked at registration
    # A worker that never answers: after a minute the form says where to look.
    gave_up = member_client.get(ESTIMATE, {**query, "waited": "60"}).content.decode()
    assert escape(f"is a worker for the '{settings.PLAYGROUND_QUEUE}' queue running?") in gave_up
    # Once counted, every later request answers from the stored facts at once.
    assert base_model_facts(tiny_base_model.pk) == 2
    page = member_client.get(ESTIMATE, query).content.decode()
    assert "trainable of" in page and "Counting" not in page


def test_versions_that_cannot_train_are_greyed_with_the_reason_in_a_fixed_number_of_queries(
        member_client, member, team, dataset, tiny_base_model):
    import re

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from studio.datasets.models import Dataset, DatasetAnalysis

    def version(n: int, **fields) -> Dataset:
        # A cleaned version of a large file lists every dropped row: the list must not read those.
        return Dataset.objects.create(**{**dict(
            team=team, created_by=member, name=dataset.name, file=dataset.file.name, format="csv", row_count=2,
            schema=dataset.schema, tasks=dataset.tasks, sha256=dataset.sha256, size_bytes=1, root=dataset,
            version=n, operation="drop_rows", parameters={"rows": list(range(50_000))}), **fields})

    blocked, unmapped, clean = version(2), version(3, confirmed=False, tasks=[]), version(4)
    job = Job.objects.create(team=team, owner=member, kind="analyse", base_model=tiny_base_model, config={},
                             status="succeeded")
    DatasetAnalysis.objects.create(dataset=blocked, job=job, base_model=tiny_base_model, max_length=64,
                                   blocking_rows=3)
    member_client.get("/jobs/new/")  # the session and the caches warm
    with CaptureQueriesContext(connection) as first:
        page = member_client.get("/jobs/new/").content.decode()
    options = dict(re.findall(r'<option value="(\d+)"([^>]*>[^<]*)</option>', page))
    assert "disabled" not in options[str(dataset.pk)] and "disabled" not in options[str(clean.pk)]
    assert "disabled" in options[str(blocked.pk)] and "3 rows block training" in options[str(blocked.pk)]
    assert "disabled" in options[str(unmapped.pk)] and "columns not confirmed" in options[str(unmapped.pk)]
    # Ten more versions cost no more queries: one query lists them all with their analyses' counts.
    for n in range(5, 15):
        version(n)
    with CaptureQueriesContext(connection) as more:
        assert member_client.get("/jobs/new/").content.decode().count("<option value=") > len(options)
    assert len(more) == len(first), [q["sql"][:120] for q in more.captured_queries]


def test_eigenloras_sources_are_ticked_among_the_teams_adapters_and_must_share_the_base(
        member_client, member, team, dataset, tiny_base_model, tiny_model, media_root, tmp_path):
    import shutil

    from studio.artifacts.services import artifact_create
    from studio.jobs.services import job_create_train
    from tests.tiny_model import tiny_lora_sources

    other_base = base_model_register(name="other-tiny", source="local",
                                     ref=str(shutil.copytree(tiny_model, tmp_path / "other-tiny")))
    adapters = []
    for base, source in ((tiny_base_model, tiny_lora_sources()[0]), (tiny_base_model, tiny_lora_sources()[1]),
                         (other_base, tiny_lora_sources()[2])):
        job = job_create_train(user=member, team=team, dataset=dataset, base_model=base,
                               settings_values={"max_steps": 1}, method_params={}, name=f"lora {source.name}")
        copy = media_root / "jobs" / str(job.pk) / "adapter"
        shutil.copytree(source, copy)
        adapters.append(artifact_create(job=job, kind="adapter", path=str(copy), metadata={}))
    page = member_client.get("/jobs/new/", {"method": "eigenlora"}).content.decode()
    for adapter in adapters:
        assert f'value="{adapter.pk}"' in page and f"#{adapter.pk} {escape(adapter.name)}" in page

    form = {"dataset": dataset.pk, "base_model": tiny_base_model.pk, "method": "eigenlora", "task": "sft",
            "fields_for": "eigenlora", "max_steps": 1}
    ours = [adapters[0].pk, adapters[1].pk]
    one = member_client.post("/jobs/new/", {**form, "method__source_adapters": ours[:1]})
    assert one.status_code == 400 and "at least 2 LoRA adapters; got 1" in one.content.decode()
    mixed = member_client.post("/jobs/new/", {**form, "method__source_adapters": [ours[0], adapters[2].pk]})
    assert mixed.status_code == 400 and f"adapter #{adapters[2].pk}" in mixed.content.decode()
    assert "not on tiny" in mixed.content.decode()

    assert member_client.post("/jobs/new/", {**form, "method__source_adapters": ours}).status_code == 302
    job = Job.objects.get(config__method="eigenlora")
    assert job.config["method_params"]["source_adapters"] == f"{adapters[0].path},{adapters[1].path}"
    assert job.input_artifact_ids == ours  # the new adapter's lineage names its sources
