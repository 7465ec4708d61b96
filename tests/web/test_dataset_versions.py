"""Versions with lineage made by diet steps, analyses (preview with masking,
histogram, lint findings) and the one-click drop of flagged rows. The
worker tasks run in-process with the tiny model's tokenizer."""

import json

from django.core.files.uploadedfile import SimpleUploadedFile

from studio.datasets.models import Dataset, DatasetAnalysis, DatasetOperation
from studio.datasets.selectors import dataset_blocking_findings, dataset_training_refusal, dataset_version_tree
from worker.runner import run_job

ROWS = [{"instruction": f"Name the number after {i}.", "output": f"It is {i + 1}."} for i in range(8)]
DUPLICATED = ROWS + [ROWS[0], ROWS[3]]  # rows 9 and 10 repeat rows 1 and 4


def run_dataset_job(row) -> str:
    """Run the job behind an analysis or operation as a worker would (claim, run, finish); its end status."""
    return run_job(row.job_id, worker_name="test-worker", pool=row.job.device_pool)


def jsonl(rows) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def uploaded(client, rows, name="numbers.jsonl") -> Dataset:
    response = client.post("/datasets/", {"file": SimpleUploadedFile(name, jsonl(rows).encode())})
    assert response.status_code == 302, response.content.decode()[:1000]
    return Dataset.objects.get(pk=int(response.url.rstrip("/").split("/")[-1]))


def run_step(client, dataset, operation, data) -> DatasetOperation:
    response = client.post(f"/datasets/{dataset.pk}/diet/{operation}/",
                           {f"{operation}-{key}": value for key, value in data.items()}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Retarget"] == "#operations", response.content.decode()
    run = DatasetOperation.objects.filter(dataset=dataset, operation=operation).latest("pk")
    assert run_dataset_job(run) == "succeeded", DatasetOperation.objects.get(pk=run.pk).message
    run.refresh_from_db()
    return run


def test_dedupe_makes_a_new_version_with_lineage(member_client):
    upload = uploaded(member_client, DUPLICATED)
    run = run_step(member_client, upload, "dedupe", {"threshold": "0.8"})
    version = run.results.get()
    assert (version.version, version.operation, version.row_count, version.root) == (2, "dedupe", 8, upload)
    assert list(version.parents.all()) == [upload] and version.confirmed and version.tasks == ["sft", "grpo"]
    assert version.report["exact_removed_rows"] == [9, 10] and version.parameters == {"near": False, "threshold": 0.8}
    assert version.report["lineage"]["parents"] == [upload.sha256] and len(version.sha256) == 64
    assert version.sha256 != upload.sha256
    page = member_client.get(f"/datasets/{upload.pk}/operations/{run.pk}/", HTTP_HX_REQUEST="true").content.decode()
    assert f'href="/datasets/{version.pk}/"' in page and "8 rows" in page and 'hx-swap-oob' in page
    # A step on the new version hangs under it in the tree shown on every version's page.
    sub = run_step(member_client, version, "random_subsample", {"n": "3", "seed": "7"}).results.get()
    tree = dataset_version_tree(sub)
    assert [n["version"].version for n in tree] == [1]
    assert [n["version"].version for n in tree[0]["children"]] == [2]
    assert [n["version"].version for n in tree[0]["children"][0]["children"]] == [3]
    page = member_client.get(f"/datasets/{sub.pk}/").content.decode()
    assert 'data-version="1"' in page and 'data-version="3"' in page and "random_subsample" in page
    assert "n=3" in page and sub.row_count == 3


def test_same_seed_same_subsample(member_client):
    upload = uploaded(member_client, ROWS)
    first = run_step(member_client, upload, "random_subsample", {"n": "4", "seed": "1"}).results.get()
    second = run_step(member_client, upload, "random_subsample", {"n": "4", "seed": "1"}).results.get()
    assert first.sha256 == second.sha256 and first.version == 2 and second.version == 3


def test_split_makes_train_and_validation_versions(member_client):
    upload = uploaded(member_client, ROWS)
    run = run_step(member_client, upload, "split", {"validation_ratio": "0.25", "seed": "0"})
    versions = list(run.results.order_by("pk"))
    assert [v.row_count for v in versions] == [6, 2]
    assert all(list(v.parents.all()) == [upload] for v in versions)
    assert versions[0].file.name.endswith("-split-train.jsonl")


def test_merge_of_the_same_schema_has_two_parents(member_client):
    first, second = uploaded(member_client, ROWS[:5], "a.jsonl"), uploaded(member_client, ROWS[5:], "b.jsonl")
    response = member_client.post(f"/datasets/{first.pk}/diet/merge/", {"merge-others": [second.pk]})
    assert response.status_code == 200
    run = DatasetOperation.objects.get(operation="merge")
    assert run_dataset_job(run) == "succeeded"
    merged = run.results.get()
    assert merged.row_count == 8 and sorted(p.pk for p in merged.parents.all()) == [first.pk, second.pk]
    page = member_client.get(f"/datasets/{merged.pk}/").content.decode()
    assert "merged with" in page


def test_merge_offers_only_versions_of_the_same_schema(member_client):
    first = uploaded(member_client, ROWS, "a.jsonl")
    other = uploaded(member_client, [{"text": "plain words", "label": "x"}], "c.jsonl")
    response = member_client.post(f"/datasets/{first.pk}/diet/merge/", {"merge-others": [other.pk]})
    assert "Select a valid choice" in response.content.decode() and not DatasetOperation.objects.exists()


def test_bad_step_parameters_are_refused_before_queueing(member_client):
    upload = uploaded(member_client, ROWS)
    response = member_client.post(f"/datasets/{upload.pk}/diet/length_filter/",
                                  {"length_filter-field": "*", "length_filter-unit": "chars",
                                   "length_filter-min": "50", "length_filter-max": "10"})
    # min > max is caught by the library on the worker; a negative n by the form here.
    response = member_client.post(f"/datasets/{upload.pk}/diet/random_subsample/",
                                  {"random_subsample-n": "0", "random_subsample-seed": "0"})
    assert "greater than or equal to 1" in response.content.decode()
    assert DatasetOperation.objects.filter(operation="random_subsample").count() == 0
    run = DatasetOperation.objects.get(operation="length_filter")
    assert run_dataset_job(run) == "failed"
    run.refresh_from_db()
    assert "min" in run.message and "above max" in run.message


def test_counting_tokens_needs_a_base_model(member_client):
    upload = uploaded(member_client, ROWS)
    response = member_client.post(f"/datasets/{upload.pk}/diet/length_filter/", {
        "length_filter-field": "*", "length_filter-unit": "tokens", "length_filter-max": "10"})
    assert "pick the base model whose tokens to count" in response.content.decode()
    assert not DatasetOperation.objects.exists()


def test_length_filter_in_tokens_uses_the_base_model(member_client, tiny_base_model):
    upload = uploaded(member_client, ROWS + [{"instruction": "la " * 80, "output": "long"}])
    run = run_step(member_client, upload, "length_filter", {"field": "instruction", "unit": "tokens", "max": "40",
                                                            "base_model": str(tiny_base_model.pk)})
    assert run.results.get().row_count == 8 and run.results.get().report["too_long_rows"] == [9]


def test_length_filter_in_characters(member_client):
    upload = uploaded(member_client, ROWS + [{"instruction": "x" * 500, "output": "long"}])
    run = run_step(member_client, upload, "length_filter", {"field": "instruction", "unit": "chars", "max": "100"})
    assert run.results.get().row_count == 8 and run.results.get().report["too_long_rows"] == [9]


def test_analysis_shows_masked_preview_histogram_and_findings(member_client, tiny_base_model):
    # Rows render to about 44 tokens through the chat template; row 11 to far more than max length.
    upload = uploaded(member_client, DUPLICATED + [{"instruction": "Repeat: " + "la " * 60, "output": "No."}])
    response = member_client.post(f"/datasets/{upload.pk}/analyse/",
                                  {"base_model": tiny_base_model.pk, "max_length": 48}, HTTP_HX_REQUEST="true")
    analysis = DatasetAnalysis.objects.get()
    # Queued, with the job progress component following the analysis job's event stream.
    assert 'data-status="queued"' in response.content.decode()
    assert f'data-job-progress data-job="{analysis.job_id}"' in response.content.decode()
    assert run_dataset_job(analysis) == "succeeded", DatasetAnalysis.objects.get().message
    analysis.refresh_from_db()
    # A job like any other (progress events on its stream), but it does not ring the bell: the page shows it.
    assert analysis.job.events.filter(kind="progress").exists() and not analysis.job.notifications.exists()
    assert analysis.stats["rows"] == 11 and analysis.stats["total_tokens"] > 11 * 40
    assert analysis.stats["truncated_rows"] == 1
    assert analysis.stats["tokens_per_epoch"] > 0 and analysis.histogram_svg.startswith("<svg")
    codes = {f["code"]: f for f in analysis.findings}
    assert codes["exact_duplicates"]["rows"] == [9, 10] and codes["exact_duplicates"]["severity"] == "warning"
    assert codes["over_max_length"]["rows"] == [11] and not dataset_blocking_findings(upload)
    page = member_client.get(f"/datasets/{upload.pk}/analyses/{analysis.pk}/").content.decode()
    assert "data-job-progress" not in page and '<figure class="histogram" id="histogram"><svg' in page
    assert '<span class="masked">' in page and '<span class="loss">' in page and 'id="rows-over">1<' in page
    assert 'data-code="exact_duplicates"' in page and "Drop the ticked rows" in page
    assert "2 rows: 9, 10" in page and "row 11" in page  # counts read as counts, not "2: 9, 10"
    # The loss-on-everything switch: no masked part left in the preview.
    member_client.post(f"/datasets/{upload.pk}/analyse/", {"base_model": tiny_base_model.pk, "max_length": 48,
                                                           "loss_on_prompt": "on"})
    everything = DatasetAnalysis.objects.latest("pk")
    run_dataset_job(everything)
    everything.refresh_from_db()
    assert everything.loss_on_prompt and all(s["loss"] or s["cut"] for row in everything.preview
                                             for s in row["segments"])
    # A reload of the dataset page shows the latest results.
    assert 'id="histogram"' in member_client.get(f"/datasets/{upload.pk}/").content.decode()


def test_blocking_findings_refuse_training_until_the_rows_are_dropped(member_client, tiny_base_model):
    # Rows that parse but cannot be trained on are kept at upload, so that every one can be listed and dropped.
    upload = uploaded(member_client, ROWS[:1] + [{"instruction": "Say it.", "output": " "}] + ROWS[1:])
    assert upload.problem.startswith("numbers.jsonl, row 2, field 'output': is empty")
    assert "has rows training would refuse" in dataset_training_refusal(upload)
    page = member_client.get(f"/datasets/{upload.pk}/").content.decode()
    assert 'id="dataset-problem"' in page and "Train on this dataset" not in page
    member_client.post(f"/datasets/{upload.pk}/analyse/", {"base_model": tiny_base_model.pk, "max_length": 64})
    analysis = DatasetAnalysis.objects.get()
    assert run_dataset_job(analysis) == "succeeded"
    analysis.refresh_from_db()
    blocking = dataset_blocking_findings(upload)
    assert [f["code"] for f in blocking] == ["empty_response"] and blocking[0]["rows"] == [2]
    assert "leave out the 1 row that blocks training" in analysis.notice and analysis.histogram_svg
    response = member_client.post(f"/datasets/{upload.pk}/analyses/{analysis.pk}/drop/",
                                  {"code": "empty_response"}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    run = DatasetOperation.objects.get(operation="drop_rows")
    assert run_dataset_job(run) == "succeeded"
    fixed = run.results.get()
    assert fixed.row_count == 8 and fixed.operation == "drop_rows" and list(fixed.parents.all()) == [upload]
    assert fixed.problem == "" and dataset_blocking_findings(fixed) == [] and dataset_training_refusal(fixed) is None


def chat(*turns) -> dict:
    return {"messages": [{"role": role, "content": text} for role, text in turns]}


GOOD_CHATS = [chat(("user", f"Name the number after {i}."), ("assistant", f"It is {i + 1}.")) for i in range(6)]
# Rows 7-9 each block training for a different reason; row 10 repeats row 1 (a warning, kept unless ticked).
MESSY_CHATS = GOOD_CHATS + [chat(("user", "Say it."), ("assistant", " ")),
                            chat(("user", "Hello?")),
                            chat(("assistant", "I speak first."), ("user", "Odd."), ("assistant", "Yes.")),
                            GOOD_CHATS[0]]


def analysed(client, dataset, base_model, max_length=64) -> DatasetAnalysis:
    client.post(f"/datasets/{dataset.pk}/analyse/", {"base_model": base_model.pk, "max_length": max_length})
    analysis = DatasetAnalysis.objects.filter(dataset=dataset).latest("pk")
    assert run_dataset_job(analysis) == "succeeded", DatasetAnalysis.objects.get(pk=analysis.pk).message
    analysis.refresh_from_db()
    return analysis


def test_one_click_clean_drops_every_blocking_kind_into_one_version(member_client, tiny_base_model):
    upload = uploaded(member_client, MESSY_CHATS, name="chats.jsonl")
    analysis = analysed(member_client, upload, tiny_base_model)
    blocking = {f["code"]: f for f in dataset_blocking_findings(upload)}
    assert set(blocking) == {"empty_response", "ends_on_user", "roles_out_of_order"} and analysis.blocking_rows == 3
    assert [blocking[c]["rows"] for c in ("empty_response", "ends_on_user", "roles_out_of_order")] == [[7], [8], [9]]
    # Each finding shows what goes, as text; findings come grouped, blocking first.
    assert blocking["ends_on_user"]["examples"] == [{"row": 8, "why": "turn 0 (the last) is the user's",
                                                    "text": "messages: user: Hello?"}]
    severities = [f["severity"] for f in analysis.findings]
    assert severities == sorted(severities) and severities.count("blocking") == 3  # "blocking" < "warning"
    # The histogram and the preview are there while blocking rows remain: they help decide what to drop.
    assert analysis.histogram_svg.startswith("<svg") and analysis.stats["rows"] == 7 and analysis.preview
    assert "leave out the 3 rows that block training" in analysis.notice
    assert {row["row"] for row in analysis.preview} <= {1, 2, 3, 4, 5, 6, 10}  # numbered as in the file
    page = member_client.get(f"/datasets/{upload.pk}/analyses/{analysis.pk}/").content.decode()
    assert 'id="blocking-summary"' in page and "3 rows" in page and "row 8" in page
    assert page.count("checked>") == 3 and 'id="histogram"><svg' in page

    response = member_client.post(f"/datasets/{upload.pk}/analyses/{analysis.pk}/drop/",
                                  {"code": ["empty_response", "ends_on_user", "roles_out_of_order"]},
                                  HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    run = DatasetOperation.objects.get(operation="drop_rows")
    assert run_dataset_job(run) == "succeeded"
    fixed = run.results.get()  # one step, one new version, whatever the number of kinds
    assert Dataset.objects.filter(root=upload).exclude(pk=upload.pk).count() == 1
    assert fixed.row_count == 7 and list(fixed.parents.all()) == [upload]
    assert fixed.report["findings"] == {"empty_response": 1, "ends_on_user": 1, "roles_out_of_order": 1}
    assert fixed.problem == "" and dataset_training_refusal(fixed) is None
    assert analysed(member_client, fixed, tiny_base_model).blocking_rows == 0


def test_clean_refuses_nothing_ticked_and_unknown_findings(member_client, tiny_base_model):
    upload = uploaded(member_client, MESSY_CHATS, name="chats.jsonl")
    analysis = analysed(member_client, upload, tiny_base_model)
    url = f"/datasets/{upload.pk}/analyses/{analysis.pk}/drop/"
    nothing = member_client.post(url, {}, HTTP_HX_REQUEST="true")
    assert nothing.status_code == 400 and "Tick at least one finding" in nothing.content.decode()
    assert member_client.post(url, {"code": ["empty_response", "no_such_check"]}).status_code == 404
    assert not DatasetOperation.objects.exists()


def test_sharegpt_problems_name_the_files_own_fields_and_rows_read_as_text(member_client):
    turns = [{"from": "human", "value": "Hi " * 200}, {"from": "gpt", "value": "Hello."}]
    rows = [{"conversations": turns}, {"conversations": [{"from": "gpt", "value": "Me first."}] + turns}]
    upload = uploaded(member_client, rows, name="share.jsonl")
    assert "row 2, field 'conversations[0].from'" in upload.problem and ".role" not in upload.problem
    page = member_client.get(f"/datasets/{upload.pk}/").content.decode()
    first_rows = page[page.index("<h2>First rows</h2>"):]
    # A person's reading of the row, cut with a visible ellipsis, rather than a cut-off JSON list.
    assert "human: Hi Hi" in first_rows and " …" in first_rows and "&quot;from&quot;" not in first_rows


def test_analysis_of_preference_pairs_previews_chosen_and_rejected_side_by_side(member_client, tiny_base_model):
    pairs = [{"prompt": f"What is {a} plus 1?", "chosen": f"{a + 1}.", "rejected": "No idea."} for a in range(3)]
    upload = uploaded(member_client, pairs, name="pairs.jsonl")
    member_client.post(f"/datasets/{upload.pk}/analyse/", {"base_model": tiny_base_model.pk, "max_length": 64})
    analysis = DatasetAnalysis.objects.get()
    assert run_dataset_job(analysis) == "succeeded", DatasetAnalysis.objects.get().message
    analysis.refresh_from_db()
    first = analysis.preview[0]["sides"]
    assert "".join(s["text"] for s in first["chosen"]["segments"] if s["loss"]).startswith("1.")
    assert "".join(s["text"] for s in first["rejected"]["segments"] if s["loss"]).startswith("No idea.")
    page = member_client.get(f"/datasets/{upload.pk}/analyses/{analysis.pk}/").content.decode()
    assert 'data-side="chosen"' in page and 'data-side="rejected"' in page and '<span class="loss">1.' in page
