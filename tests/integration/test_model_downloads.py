"""Adding a model from the hub on the real stack (its hub on 127.0.0.1 sends
slowly here): a cancel stops the download within a chunk and leaves no file;
a worker killed mid-download is replaced and the next one fetches only what
was not finished (huggingface_hub 2.x resumes a file within one process, on a
dropped connection, but starts a file again in a new process: tests/core/
test_hub.py covers the dropped connection), then registers the model."""

import time

import pytest

from tests.hub_server import Repo, model_repo_files

FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def admin(stack):
    return stack.login()


@pytest.fixture
def slow_hub(stack):
    stack.hub.bytes_per_s = 1 << 20  # the 6 MiB weights take about six seconds
    yield stack.hub
    stack.hub.bytes_per_s = 0


def add_from_hub(stack, session, repo_id: str) -> int:
    stack.hub.repos[repo_id] = Repo(files=model_repo_files(stack.tiny_model_path))
    response = stack.post(session, "/models/", data={"add": "hub", "repo_id": repo_id}, allow_redirects=False)
    assert response.status_code == 302, response.text
    return int(response.headers["Location"].rstrip("/").split("/")[-1])


def wait_for_bytes(stack, session, job_id: int, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = stack.job_state(session, job_id)["events"]
        if any(e["kind"] == "progress" and e["data"].get("unit") == "bytes" and e["data"]["done"] >= at_least
               for e in events):
            return
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not report {at_least} bytes")


def staging(stack, job_id: int):
    return stack.data_dir / "media" / "models" / "downloads" / f"job-{job_id}"


def test_a_cancelled_download_stops_and_leaves_nothing(stack, admin, slow_hub):
    job_id = add_from_hub(stack, admin, "acme/cancelled-llama")
    wait_for_bytes(stack, admin, job_id, 1 << 20)
    stack.post(admin, f"/jobs/{job_id}/cancel/")
    state = stack.wait_for_status(admin, job_id, FINISHED, timeout=30)
    assert state["status"] == "cancelled"
    assert not staging(stack, job_id).exists()
    assert "acme/cancelled-llama" not in admin.get(f"{stack.base_url}/models/").text.split('id="models"')[1]


def test_a_download_whose_worker_is_killed_is_finished_by_the_next_worker(stack, admin, slow_hub):
    job_id = add_from_hub(stack, admin, "acme/resumed-llama")
    weights = "/acme/resumed-llama/resolve/0123456789abcdef0123456789abcdef01234567/model.safetensors"
    deadline = time.monotonic() + 60
    while not any(method == "GET" and path == weights for method, path, _ in slow_hub.requests):
        assert time.monotonic() < deadline, "the weights were never asked for"
        time.sleep(0.1)
    time.sleep(1.5)  # the weights (asked for last, the other files done) are on their way
    stack.worker.kill()  # kill -9 mid-file
    stack.worker.wait()
    before = len(slow_hub.requests)
    stack.start_worker(name="download-worker@%h")
    state = stack.wait_for_status(admin, job_id, FINISHED, timeout=120)
    assert state["status"] == "succeeded", state["events"][-3:]
    statuses = [e["data"]["status"] for e in state["events"] if e["kind"] == "status"]
    assert statuses == ["queued", "running", "queued", "running", "succeeded"]
    fetched_again = {path.rsplit("/", 1)[1] for method, path, _ in slow_hub.requests[before:] if method == "GET"
                     and "/acme/resumed-llama/resolve/" in path and not path.endswith("/config.json")}
    assert fetched_again == {"model.safetensors"}  # config.json is read first by every try, to check it
    assert "acme/resumed-llama@0123456789ab" in admin.get(f"{stack.base_url}/models/").text
    assert not staging(stack, job_id).exists()
