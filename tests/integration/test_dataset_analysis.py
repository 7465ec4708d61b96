"""Dataset work on a real Celery worker: confirm a column mapping, analyse a
version with the tiny model, then dedupe and take a diverse subsample over
the bundled MiniLM encoder; an analysis whose worker is killed is taken
back and finished by the next worker, like any job; and dataset work runs
on its own worker (the dataset pool), so it finishes while a training job
occupies the job worker."""

import asyncio
import json
import re
import time

import pytest

from tests.integration.test_live_jobs import FINISHED, read_events

pytestmark = pytest.mark.integration

CSV = ("question,answer\n" + "".join(f"What comes after {i}?,{i + 1}\n" for i in range(6))
       + "What comes after 0?,1\nWhat comes after 3?,4\n")  # rows 7 and 8 repeat rows 1 and 4


def wait_for(stack, session, path: str, timeout: float = 180) -> str:
    """Fetch a work partial (as the progress component does when its job ends) until it says succeeded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = session.get(stack.base_url + path).text
        status = re.search(r'data-status="(\w+)"', page).group(1)
        if status in ("succeeded", "failed"):
            assert status == "succeeded", page
            return page
        time.sleep(0.3)
    raise AssertionError(f"{path} still {status} after {timeout} s")


def operation_path(page: str) -> str:
    return re.search(r'data-refresh-url="(/datasets/\d+/operations/\d+/)"', page).group(1)


def new_version(page: str) -> int:
    return int(re.search(r'class="new-version" href="/datasets/(\d+)/"', page).group(1))


def test_mapping_analysis_and_diet_steps_run_on_the_worker(stack):
    session = stack.login()
    upload = stack.upload(session, "numbers.csv", CSV)
    page = session.get(f"{stack.base_url}/datasets/{upload}/").text
    assert 'id="mapping-form"' in page and "unsure" in page

    confirmed = stack.post(session, f"/datasets/{upload}/mapping/", data={
        "schema": "prompt_completion", "prompt": "question", "completion": "answer"})
    mapped = new_version(wait_for(stack, session, operation_path(confirmed.text)))
    assert "Train on this dataset" in session.get(f"{stack.base_url}/datasets/{mapped}/").text

    started = stack.post(session, f"/datasets/{mapped}/analyse/", data={
        "base_model": stack.tiny_model_id, "max_length": 48})
    poll = re.search(r'data-refresh-url="(/datasets/\d+/analyses/\d+/)"', started.text).group(1)
    assert "data-job-progress" in started.text
    analysis = wait_for(stack, session, poll)
    assert '<figure class="histogram" id="histogram"><svg' in analysis
    assert '<span class="masked">' in analysis and '<span class="loss">' in analysis
    assert 'data-code="exact_duplicates"' in analysis and "2 rows: 7, 8" in analysis

    deduped = stack.post(session, f"/datasets/{mapped}/diet/dedupe/", data={"dedupe-threshold": "0.8"})
    version = new_version(wait_for(stack, session, operation_path(deduped.text)))
    page = session.get(f"{stack.base_url}/datasets/{version}/").text
    assert '<span id="row-count">6 rows</span>' in page and "dedupe" in page
    assert 'data-version="1"' in page and 'data-version="2"' in page and 'data-version="3"' in page

    diverse = stack.post(session, f"/datasets/{version}/diet/diverse_subsample/", data={
        "diverse_subsample-n": "3", "diverse_subsample-seed": "0", "diverse_subsample-clusters": "3"})
    subsample = new_version(wait_for(stack, session, operation_path(diverse.text), timeout=300))
    assert '<span id="row-count">3 rows</span>' in session.get(f"{stack.base_url}/datasets/{subsample}/").text

    # Another team sees none of it.
    outsider = stack.login(("mallory", "mallory-pass-123"))
    assert outsider.get(f"{stack.base_url}{poll}").status_code == 404


def test_an_analysis_whose_worker_is_killed_is_finished_by_the_next_worker(stack):
    session = stack.login()
    rows = "".join(json.dumps({"instruction": f"Spell the number {i} in words, please.", "output": f"It is {i}."})
                   + "\n" for i in range(20000))  # long enough to be killed while it runs
    dataset = stack.upload(session, "many.jsonl", rows)
    started = stack.post(session, f"/datasets/{dataset}/analyse/", data={"base_model": stack.tiny_model_id,
                                                                          "max_length": 48})
    job_id = int(re.search(r'data-job-progress data-job="(\d+)"', started.text).group(1))
    url, cookie = stack.ws_url(job_id), stack.cookie_header(session)
    seen = asyncio.run(read_events(url, cookie, until_finished=False, stop_after=3))  # queued, running, a phase
    assert [e["data"].get("status") for e in seen[:2]] == ["queued", "running"] and seen[2]["kind"] == "progress"
    running_on = stack.job_state(session, job_id)["events"][1]["data"]["worker"]
    assert running_on.startswith(stack.dataset_worker_name.split("@")[0] + "@")  # the dataset pool's worker
    stack.dataset_worker.kill()  # kill -9: no goodbye, no status update
    stack.dataset_worker.wait()
    stack.start_dataset_worker(name="dataset-second-worker@%h")

    events = asyncio.run(read_events(url, cookie, timeout=300))
    statuses = [e["data"]["status"] for e in events if e["kind"] == "status"]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"], statuses
    requeued = next(e for e in events if e["kind"] == "status" and "lost" in e["data"].get("message", ""))
    assert "starting again" in requeued["data"]["message"]
    workers = [e["data"]["worker"] for e in events if e["kind"] == "status" and e["data"]["status"] == "running"]
    assert workers[-1].startswith("dataset-second-worker@")
    page = session.get(f"{stack.base_url}/datasets/{dataset}/").text
    assert '<figure class="histogram" id="histogram"><svg' in page and 'data-status="succeeded"' in page
    assert events[-1]["data"]["status"] in FINISHED


def test_an_upload_is_analysed_while_a_training_job_holds_the_job_worker(stack):
    session = stack.login()
    training_data = stack.upload(session, "train.jsonl", "".join(
        json.dumps({"instruction": f"Say {word}.", "output": f"{word}!"}) + "\n" for word in ["a", "b", "c", "d"]))
    training = stack.start_job(session, training_data, max_steps=100000, save_every=100000)
    deadline = time.monotonic() + 120
    while not any(e["kind"] == "metrics" for e in stack.job_state(session, training)["events"]):
        assert time.monotonic() < deadline, "the training job did not start"
        time.sleep(0.3)
    assert stack.job_state(session, training)["status"] == "running"  # it trains on the job worker

    upload = stack.upload(session, "new.jsonl", "".join(
        json.dumps({"instruction": f"Name the colour {c}.", "output": c}) + "\n" for c in ["red", "blue", "green"]))
    started = stack.post(session, f"/datasets/{upload}/analyse/", data={"base_model": stack.tiny_model_id,
                                                                        "max_length": 48})
    poll = re.search(r'data-refresh-url="(/datasets/\d+/analyses/\d+/)"', started.text).group(1)
    analysis = wait_for(stack, session, poll, timeout=120)
    assert '<figure class="histogram" id="histogram"><svg' in analysis
    training_state = stack.job_state(session, training)
    assert training_state["status"] == "running"  # the analysis did not wait for it
    assert any(e["kind"] == "metrics" for e in training_state["events"])

    stack.post(session, f"/jobs/{training}/cancel/")
    assert stack.wait_for_status(session, training, FINISHED, timeout=60)["status"] == "cancelled"
