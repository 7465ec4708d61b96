"""Merging, quantizing, evaluating and chatting as jobs on the real stack:
Redis, uvicorn and Celery workers as separate processes."""

import asyncio
import html
import json
import re

import pytest
import websockets

pytestmark = pytest.mark.integration

PAIRS = "".join(json.dumps({"instruction": f"Say {word}.", "output": f"{word.capitalize()}!"}) + "\n"
                for word in ["hello", "yes", "blue", "green"])
FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def admin(stack):
    return stack.login()


@pytest.fixture(scope="module")
def dataset_id(stack, admin):
    return stack.upload(admin, "merge-pairs.jsonl", PAIRS)


def _artifact_id(stack, session, job_id) -> int:
    events = stack.job_state(session, job_id)["events"]
    return next(e for e in events if e["kind"] == "artifact")["data"]["artifact_id"]


def _succeeded(stack, session, job_id, timeout=300) -> dict:
    state = stack.wait_for_status(session, job_id, FINISHED, timeout=timeout)
    failures = [e["data"] for e in state["events"] if e["kind"] == "status" and e["data"].get("message")]
    assert state["status"] == "succeeded", failures
    return state


@pytest.fixture(scope="module")
def trained(stack, admin, dataset_id):
    """Two finished training jobs and their adapters."""
    jobs = [stack.start_job(admin, dataset_id, max_steps=3, seed=seed) for seed in (1, 2)]
    for job_id in jobs:
        _succeeded(stack, admin, job_id)
    return jobs, [_artifact_id(stack, admin, job_id) for job_id in jobs]


def test_a_chain_queued_during_training_folds_then_exports_gguf(stack, admin, dataset_id, tmp_path):
    train_id = stack.start_job(admin, dataset_id, max_steps=3)
    response = stack.post(admin, f"/jobs/{train_id}/chain/", data={"fold": "1", "scheme": "gguf_q8_0"},
                          headers={"HX-Request": "true"})
    assert response.status_code == 200, response.text
    fold_id, quantize_id = [int(i) for i in re.findall(r'href="/jobs/(\d+)/"', response.text)]

    _succeeded(stack, admin, train_id)
    _succeeded(stack, admin, fold_id)
    state = _succeeded(stack, admin, quantize_id)
    assert any(e["kind"] == "progress" for e in state["events"])  # the page has a bar to draw

    gguf_id = _artifact_id(stack, admin, quantize_id)
    page = admin.get(f"{stack.base_url}/artifacts/{gguf_id}/")
    assert page.status_code == 200
    # the default report: sizes and next-token agreement; answers to prompts only when asked for (slow on a CPU)
    assert "Before and after" in page.text and "Next-token agreement with the source" in page.text
    assert "Same prompts, before and after" not in page.text
    # Lineage: the GGUF comes from the folded model, which comes from the adapter.
    adapter_id, folded_id = _artifact_id(stack, admin, train_id), _artifact_id(stack, admin, fold_id)
    assert f'href="/artifacts/{folded_id}/"' in page.text and f'href="/artifacts/{adapter_id}/"' in page.text

    name = re.search(r'href="/artifacts/\d+/files/([^"]+\.gguf)"', page.text).group(1)
    download = admin.get(f"{stack.base_url}/artifacts/{gguf_id}/files/{name}")
    assert download.status_code == 200
    path = tmp_path / name
    path.write_bytes(download.content)
    from gguf import GGUFReader

    reader = GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert len(reader.tensors) > 0
    # Named after the base model and the training run, not after the folder it was read from ("model").
    train_name = html.unescape(re.search(r"<h1>(.+?)</h1>", admin.get(f"{stack.base_url}/jobs/{train_id}/").text)[1])
    assert reader.fields["general.name"].contents().endswith(f" - {train_name}") and train_name

    outsider = stack.login(("mallory", "mallory-pass-123"))
    for url in (f"/artifacts/{gguf_id}/", f"/artifacts/{gguf_id}/files/{name}", f"/artifacts/{gguf_id}/download/"):
        assert outsider.get(stack.base_url + url).status_code == 404


def test_two_adapters_combine_into_one_that_stock_peft_loads(stack, admin, trained, tmp_path):
    _, adapters = trained
    response = stack.post(admin, "/jobs/new/merge/", allow_redirects=False, data={
        "method": "lora_linear", "artifacts": adapters, f"weight_{adapters[0]}": "0.5", f"weight_{adapters[1]}": "0.5"})
    assert response.status_code == 302, response.text
    merge_id = int(response.headers["Location"].rstrip("/").split("/")[-1])
    _succeeded(stack, admin, merge_id)
    merged = _artifact_id(stack, admin, merge_id)

    import io
    import zipfile

    archive = zipfile.ZipFile(io.BytesIO(admin.get(f"{stack.base_url}/artifacts/{merged}/download/").content))
    archive.extractall(tmp_path)
    [adapter_dir] = [p.parent for p in tmp_path.rglob("adapter_config.json")]
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(stack.tiny_model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


def test_a_merge_with_too_few_inputs_is_refused_naming_the_field(stack, admin, trained):
    _, adapters = trained
    response = stack.post(admin, "/jobs/new/merge/", data={"method": "lora_ties", "artifacts": adapters[:1]})
    assert response.status_code == 400 and "sources" in response.text


def test_an_adapter_is_evaluated_and_the_scores_show_on_its_page(stack, admin, trained, dataset_id):
    _, adapters = trained
    response = stack.post(admin, "/jobs/new/evaluate/", allow_redirects=False, data={
        "artifact": adapters[0], "dataset": dataset_id, "task": "sft", "max_rows": 4, "generate_rows": 2,
        "max_new_tokens": 4})
    assert response.status_code == 302, response.text
    evaluate_id = int(response.headers["Location"].rstrip("/").split("/")[-1])
    state = _succeeded(stack, admin, evaluate_id)
    [scores] = [e["data"] for e in state["events"] if e["kind"] == "eval"]
    assert scores["perplexity"] > 1 and 0 <= scores["rouge_l"] <= 1
    page = admin.get(f"{stack.base_url}/artifacts/{adapters[0]}/")
    assert f'href="/jobs/{evaluate_id}/"' in page.text and str(scores["perplexity"]) in page.text


async def _chat(url, cookie, request, timeout=120):
    messages = []
    async with websockets.connect(url, additional_headers={"Cookie": cookie, "Origin": url.replace("ws", "http", 1)},
                                  open_timeout=20) as socket:
        await socket.send(json.dumps(request))
        while True:
            message = json.loads(await asyncio.wait_for(socket.recv(), timeout))
            messages.append(message)
            sides = next((m["sides"] for m in messages if m["type"] == "accepted"), None)
            if message["type"] == "error" and "errors" in message:
                return messages
            if sides and len([m for m in messages if m["type"] in ("done", "error")]) == len(sides):
                return messages


def test_the_playground_streams_two_artifacts_side_by_side(stack, admin, trained):
    _, adapters = trained
    url = stack.base_url.replace("http://", "ws://") + "/ws/playground/"
    request = {"artifacts": adapters, "prompt": "Say hello.", "temperature": 0, "max_new_tokens": 8}
    messages = asyncio.run(_chat(url, stack.cookie_header(admin), request))
    for side in "ab":
        pieces = [m for m in messages if m["type"] == "piece" and m["side"] == side]
        [done] = [m for m in messages if m["type"] == "done" and m["side"] == side]
        assert len(pieces) >= 2 and done["pieces"] == len(pieces)  # streamed, not sent in one go

    bad = asyncio.run(_chat(url, stack.cookie_header(admin), {"artifacts": [], "prompt": "", "top_p": 5}))
    assert set(bad[-1]["errors"]) == {"artifacts", "prompt", "top_p"}
    outsider = stack.login(("mallory", "mallory-pass-123"))
    refused = asyncio.run(_chat(url, stack.cookie_header(outsider), {"artifacts": adapters[:1], "prompt": "Hi"}))
    assert refused[-1]["errors"] == {"artifacts": "no such artifact in your teams"}


def test_a_merge_search_parks_between_steps_and_celery_wakes_it_until_it_keeps_the_best(stack, admin, trained,
                                                                                          dataset_id):
    """The search holds no worker while its candidates run: each candidate's end sends it back to the pool's
    Celery worker, which runs its next step (one generation of two here; tests/web/test_merge_search.py runs
    two generations and a lost worker through the claim itself)."""
    _, adapters = trained
    ranges = {f"weight_{end}_{a}": value for a in adapters for end, value in (("low", "0"), ("high", "1"))}
    response = stack.post(admin, "/jobs/new/merge-search/", allow_redirects=False, data={
        "method": "task_arithmetic", "artifacts": adapters, "dataset": dataset_id, "task": "sft",
        "metric": "eval_loss", "max_rows": "4", "generate_rows": "0", "budget": "2", "population": "2", **ranges})
    assert response.status_code == 302, response.text
    search_id = int(response.headers["Location"].rstrip("/").split("/")[-1])
    state = _succeeded(stack, admin, search_id)
    scored = [e["data"] for e in state["events"] if e["kind"] == "candidate"]
    assert [c["index"] for c in scored] == [0, 1] and all(isinstance(c["score"], float) for c in scored)
    waits = [e["data"] for e in state["events"] if e["kind"] == "status" and e["data"]["status"] == "queued"]
    assert len(waits) >= 2  # queued at the start, then parked at least once waiting for a candidate
    page = admin.get(f"{stack.base_url}/jobs/{search_id}/").text
    best = min(scored, key=lambda c: c["score"])["index"]
    assert f"Best: candidate {best}" in page and "Recipe: task_arithmetic, weights" in page
