"""Real Redis, real Celery worker, real ASGI server, real WebSocket clients."""

import asyncio
import io
import time
import json
import zipfile

import openai
import pytest
import websockets

from tests.integration.test_openai_serving import _client

pytestmark = pytest.mark.integration

PAIRS = "".join(json.dumps({"instruction": f"Say {word}.", "output": f"{word.capitalize()}!"}) + "\n"
                for word in ["hello", "yes", "blue", "green"])
FINISHED = {"succeeded", "failed", "cancelled"}


async def read_events(url, cookie, *, after=0, stop_after=None, until_finished=True, until_kind=None, timeout=180):
    """Connect, say the last seq we have, and read events (until ``stop_after`` of them, the first of kind
    ``until_kind``, or the job's end)."""
    events = []
    async with websockets.connect(url, additional_headers={"Cookie": cookie, "Origin": url.replace("ws", "http", 1)},
                                  open_timeout=20) as socket:
        await socket.send(json.dumps({"after": after}))
        while True:
            message = json.loads(await asyncio.wait_for(socket.recv(), timeout))
            for event in message if isinstance(message, list) else [message]:  # a catch-up list, or one event
                events.append(event)
                if (stop_after and len(events) >= stop_after) or (until_kind and event["kind"] == until_kind):
                    return events
                if until_finished and event["kind"] == "status" and event["data"]["status"] in FINISHED:
                    return events


async def close_code(url, cookie=""):
    headers = {"Origin": url.replace("ws", "http", 1), **({"Cookie": cookie} if cookie else {})}
    socket = await websockets.connect(url, additional_headers=headers)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(socket.recv(), 10)
    return closed.value.rcvd.code


@pytest.fixture(scope="module")
def admin(stack):
    return stack.login()


@pytest.fixture(scope="module")
def dataset_id(stack, admin):
    return stack.upload(admin, "pairs.jsonl", PAIRS)


def test_events_stream_live_and_a_reconnect_gets_the_rest(stack, admin, dataset_id):
    job_id = stack.start_job(admin, dataset_id, max_steps=12)
    url, cookie = stack.ws_url(job_id), stack.cookie_header(admin)

    first = asyncio.run(read_events(url, cookie, stop_after=6))  # then the "browser" goes away mid-run
    rest = asyncio.run(read_events(url, cookie, after=first[-1]["seq"]))
    seen = first + rest
    assert [e["seq"] for e in seen] == list(range(1, len(seen) + 1))  # no gap, no repeat
    assert [e["data"]["step"] for e in seen if e["kind"] == "metrics"] == list(range(1, 13))
    assert seen[-1]["data"]["status"] == "succeeded"

    # A second viewer arriving later sees exactly the same history.
    assert asyncio.run(read_events(url, cookie)) == seen

    artifact = next(e for e in seen if e["kind"] == "artifact")["data"]
    download = admin.get(stack.base_url + artifact["download_url"])
    assert download.status_code == 200 and download.headers["Content-Type"] == "application/zip"
    names = {name.split("/", 1)[1] for name in zipfile.ZipFile(io.BytesIO(download.content)).namelist()}
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= names


def test_socket_needs_login_and_the_right_team(stack, admin, dataset_id):
    job_id = stack.start_job(admin, dataset_id, max_steps=1)
    assert asyncio.run(close_code(stack.ws_url(job_id))) == 4401
    outsider = stack.login(("mallory", "mallory-pass-123"))
    assert asyncio.run(close_code(stack.ws_url(job_id), stack.cookie_header(outsider))) == 4404
    stack.wait_for_status(admin, job_id, FINISHED)


def test_cancel_stops_within_one_step_and_keeps_a_checkpoint(stack, admin, dataset_id):
    job_id = stack.start_job(admin, dataset_id, max_steps=100000, save_every=100000)
    url, cookie = stack.ws_url(job_id), stack.cookie_header(admin)
    asyncio.run(read_events(url, cookie, until_finished=False, stop_after=9))  # a few steps in
    response = stack.post(admin, f"/jobs/{job_id}/cancel/", headers={"HX-Request": "true"})
    assert response.status_code == 200 and 'data-status="cancelling"' in response.text

    state = stack.wait_for_status(admin, job_id, FINISHED, timeout=60)
    events = state["events"]
    assert state["status"] == "cancelled"
    cancelling = next(i for i, e in enumerate(events) if e["kind"] == "status" and e["data"]["status"] == "cancelling")
    assert sum(e["kind"] == "metrics" for e in events[cancelling:]) <= 1  # at most the step already under way
    checkpoint = [e for e in events if e["kind"] == "checkpoint"][-1]["data"]
    last_step = [e for e in events if e["kind"] == "metrics"][-1]["data"]["step"]
    assert checkpoint["step"] == last_step
    saved = stack.data_dir / "media" / "jobs" / str(job_id) / checkpoint["path"]
    assert (saved / "adapter_model.safetensors").exists()


def test_a_failing_job_reports_why_and_the_worker_takes_the_next(stack, admin, dataset_id):
    failing = stack.start_job(admin, dataset_id, max_steps=3, max_length=8)  # no response fits in 8 tokens
    state = stack.wait_for_status(admin, failing, FINISHED)
    assert state["status"] == "failed"
    page = admin.get(f"{stack.base_url}/jobs/{failing}/").text
    assert "Problem with the settings or data" in page and "raise max length" in page
    assert "Traceback" not in page

    following = stack.start_job(admin, dataset_id, max_steps=2)
    assert stack.wait_for_status(admin, following, FINISHED)["status"] == "succeeded"


def test_a_cancelled_job_resumes_from_its_checkpoint(stack, admin, dataset_id):
    job_id = stack.start_job(admin, dataset_id, max_steps=40, save_every=100000)
    url, cookie = stack.ws_url(job_id), stack.cookie_header(admin)
    asyncio.run(read_events(url, cookie, until_finished=False, stop_after=9))
    stack.post(admin, f"/jobs/{job_id}/cancel/")
    events = stack.wait_for_status(admin, job_id, FINISHED, timeout=60)["events"]
    stopped_at = [e for e in events if e["kind"] == "metrics"][-1]["data"]["step"]
    page = admin.get(f"{stack.base_url}/jobs/{job_id}/").text
    assert "Resume from last checkpoint" in page

    response = stack.post(admin, f"/jobs/{job_id}/resume/", allow_redirects=False)
    resumed = int(response.headers["Location"].rstrip("/").split("/")[-1])
    state = stack.wait_for_status(admin, resumed, FINISHED)
    steps = [e["data"]["step"] for e in state["events"] if e["kind"] == "metrics"]
    assert state["status"] == "succeeded" and steps == list(range(stopped_at + 1, 41))
    assert any(f"Resumed from step-{stopped_at:07d}" in e["data"].get("message", "") for e in state["events"])


# AdaLoRA prunes ranks from step 4 to 24 of 30, from importance scores that the checkpoint must carry.
METHOD_SETTINGS = {"lora": {}, "adalora": {"method": "adalora", "method__initial_rank": 6, "method__target_rank": 2,
                                           "method__reallocate_every": 1, "method__dropout": 0.0}}


@pytest.mark.parametrize("method", METHOD_SETTINGS)
def test_a_job_whose_worker_is_killed_resumes_on_the_next_worker(method, stack, admin, dataset_id):
    job_id = stack.start_job(admin, dataset_id, max_steps=30, save_every=3, **METHOD_SETTINGS[method])
    url, cookie = stack.ws_url(job_id), stack.cookie_header(admin)
    # Up to the first checkpoint: how many events come before it depends on the token cache (a cold one adds
    # progress events), so a fixed count could stop short of it.
    seen = asyncio.run(read_events(url, cookie, until_finished=False, until_kind="checkpoint"))
    assert seen[-1]["kind"] == "checkpoint"
    stack.worker.kill()  # kill -9: no goodbye, no status update
    stack.worker.wait()
    stack.start_worker(name=f"second-worker-{method}@%h")

    state = stack.wait_for_status(admin, job_id, FINISHED, timeout=180)
    events = state["events"]
    statuses = [e["data"]["status"] for e in events if e["kind"] == "status"]
    assert state["status"] == "succeeded" and statuses == ["queued", "running", "queued", "running", "succeeded"]
    requeued = next(e for e in events if e["kind"] == "status" and "lost" in e["data"].get("message", ""))
    resumed_from = int(requeued["data"]["message"].split("step-")[1].split()[0])
    after = events[events.index(requeued):]
    steps = [e["data"]["step"] for e in after if e["kind"] == "metrics"]
    assert steps == list(range(resumed_from + 1, 31))  # continued from the checkpoint, no step run twice after it
    workers = [e["data"]["worker"] for e in events if e["kind"] == "status" and e["data"]["status"] == "running"]
    assert workers[-1].startswith(f"second-worker-{method}@")
    if method == "adalora":  # the same losses as a run never interrupted
        uninterrupted = stack.start_job(admin, dataset_id, max_steps=30, save_every=3, **METHOD_SETTINGS[method])
        straight = stack.wait_for_status(admin, uninterrupted, FINISHED, timeout=180)["events"]
        assert losses_by_step(events) == pytest.approx(losses_by_step(straight), rel=1e-4)
        assert all(e["data"]["penalty"] > 0 for e in events if e["kind"] == "metrics")


def losses_by_step(events) -> list:
    """The loss of each step, a resumed run's record of a step replacing the one it repeats."""
    by_step = {e["data"]["step"]: e["data"]["loss"] for e in events if e["kind"] == "metrics"}
    return [by_step[step] for step in sorted(by_step)]


def test_training_goes_on_through_a_redis_restart(stack, admin, dataset_id):
    from studio import launcher

    job_id = stack.start_job(admin, dataset_id, max_steps=40)
    url, cookie = stack.ws_url(job_id), stack.cookie_header(admin)
    asyncio.run(read_events(url, cookie, until_finished=False, stop_after=10))
    client, model = _client(stack, "admin"), f"base-{stack.tiny_model_id}"
    # a /v1/ completion: its reply comes back to the web process over a pooled Redis connection, kept for later
    assert client.completions.create(model=model, prompt="Hi", max_tokens=2, temperature=0).choices[0].text
    port = stack.redis_port
    redis_proc = stack.procs[0]
    redis_proc.terminate()
    redis_proc.wait()
    # /v1/ says Redis is down in OpenAI's shape, a 503 the client may retry, not a bare 500
    with pytest.raises(openai.InternalServerError) as down:
        client.completions.create(model=model, prompt="Hi", max_tokens=2)
    assert down.value.status_code == 503 and "cannot reach Redis" in down.value.message, down.value
    time.sleep(3)  # the worker trains on; its events go to the database only
    stack.procs[0], _ = launcher.start_redis(stack.data_dir, port=port)

    state = stack.wait_for_status(admin, job_id, FINISHED)
    assert state["status"] == "succeeded"
    assert [e["data"]["step"] for e in state["events"] if e["kind"] == "metrics"] == list(range(1, 41))
    # The live stream works again, with every event.
    streamed = read_events_after_redis_restart(url, cookie)
    assert [e["seq"] for e in streamed] == [e["seq"] for e in state["events"]]
    # The first /v1/ request after the restart works (the pooled connection Redis closed is replaced, not used).
    assert client.completions.create(model=model, prompt="Hi", max_tokens=2, temperature=0).choices[0].text
    # And live pushes reach a socket again (the web process's subscription and the worker's sends came back):
    # without them a socket opened on a running job would wait for its next event until the timeout.
    next_id = stack.start_job(admin, dataset_id, max_steps=20)
    live = asyncio.run(read_events(stack.ws_url(next_id), cookie, timeout=60))
    assert [e["data"]["step"] for e in live if e["kind"] == "metrics"] == list(range(1, 21))
    assert live[-1]["data"]["status"] == "succeeded"


def read_events_after_redis_restart(url, cookie):
    """Like the page's script, reconnect until the server's stale Redis connections are replaced."""
    for _attempt in range(10):
        try:
            return asyncio.run(read_events(url, cookie, timeout=10))
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException):
            time.sleep(0.5)
    raise AssertionError("the stream did not come back after Redis restarted")


def test_a_job_submitted_while_redis_is_down_is_taken_once_and_runs_when_it_is_back(stack, admin, dataset_id):
    """The wake-up a new job sends cannot reach a Redis that is down. The job is stored by then: the
    page must say so (not answer 500, which a user answers by submitting it again), and the job runs
    once Redis is back (the workers' nudge wakes the pool)."""
    from studio import launcher

    port = stack.redis_port
    stack.procs[0].kill()  # crashed, as the chaos test does it
    stack.procs[0].wait()
    try:
        job_id = stack.start_job(admin, dataset_id, max_steps=2)  # asserts the redirect to the new job
    finally:
        stack.procs[0], _ = launcher.start_redis(stack.data_dir, port=port)
    state = stack.wait_for_status(admin, job_id, FINISHED)
    assert state["status"] == "succeeded"
    streamed = read_events_after_redis_restart(stack.ws_url(job_id), stack.cookie_header(admin))
    assert [e["seq"] for e in streamed] == [e["seq"] for e in state["events"]]


def test_an_urgent_job_preempts_a_running_one_which_resumes_each_step_once(stack, admin, dataset_id):
    paused = stack.start_job(admin, dataset_id, max_steps=30, save_every=100000)
    url, cookie = stack.ws_url(paused), stack.cookie_header(admin)
    asyncio.run(read_events(url, cookie, until_finished=False, stop_after=8))  # a few steps in
    urgent = stack.start_job(admin, dataset_id, max_steps=3)
    stack.post(admin, f"/jobs/{urgent}/queue-action/", data={"action": "priority", "priority": 10})
    table = stack.post(admin, f"/jobs/{urgent}/queue-action/", data={"action": "preempt"}).text
    assert 'role="alert"' not in table, table

    assert stack.wait_for_status(admin, urgent, FINISHED)["status"] == "succeeded"
    assert stack.job_state(admin, paused)["status"] in ("queued", "running")  # it waited for the urgent one
    events = stack.wait_for_status(admin, paused, FINISHED)["events"]
    statuses = [(e["data"]["status"], e["data"].get("message", "")) for e in events if e["kind"] == "status"]
    names = [name for name, _ in statuses]
    assert names.count("preempting") == 1 and names.count("succeeded") == 1 and names.count("running") == 2
    requeued = next(message for name, message in statuses if name == "queued" and "Preempted" in message)
    at = int(requeued.split("Preempted at step ")[1].split(";")[0])
    assert f"resumes from step-{at:07d}" in requeued
    # every step once, the ones after the checkpoint by the resumed run
    assert [e["data"]["step"] for e in events if e["kind"] == "metrics"] == list(range(1, 31))
    assert any(f"Resumed from step-{at:07d}" in e["data"].get("message", "") for e in events)


def test_a_preempted_job_cancelled_while_it_waits_ends_once(stack, admin, dataset_id):
    paused = stack.start_job(admin, dataset_id, max_steps=100000, save_every=100000)
    asyncio.run(read_events(stack.ws_url(paused), stack.cookie_header(admin), until_finished=False, stop_after=6))
    blocker = stack.start_job(admin, dataset_id, max_steps=100000, save_every=100000)
    stack.post(admin, f"/jobs/{blocker}/queue-action/", data={"action": "priority", "priority": 5})
    stack.post(admin, f"/jobs/{blocker}/queue-action/", data={"action": "preempt"})
    stack.wait_for_status(admin, paused, {"queued"}, timeout=60)
    stack.post(admin, f"/jobs/{paused}/cancel/")
    stack.post(admin, f"/jobs/{blocker}/cancel/")
    events = stack.wait_for_status(admin, paused, FINISHED, timeout=60)["events"]
    ends = [e["data"]["status"] for e in events if e["kind"] == "status" and e["data"]["status"] in FINISHED]
    assert ends == ["cancelled"]
    assert stack.wait_for_status(admin, blocker, FINISHED, timeout=60)["status"] == "cancelled"
