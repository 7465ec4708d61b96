"""Chaos on the real stack: a dozen jobs of five kinds (training, a chain
step that folds an adapter into its base when its training ends, an
evaluation, a dataset analysis and a diet step) run while the job worker, the web server
and Redis are killed with SIGKILL at seeded-random points and restarted by
the launcher's supervisor. Afterwards every job has ended exactly once, its
events are contiguous and show each step once, nothing is left behind on
disk or in the database, and a WebSocket client that followed one job
through the kills got every event once, in order.

Replay a run with the seed it prints: CHAOS_SEED=<seed> (RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import random
import re
import time

import pytest
import requests

from tests.chaos import (FINISHED, Follower, Peek, Rampage, Supervised, follower_violations, read_snapshot,
                         violations)
from tests.stack import start_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAIRS = "".join(json.dumps({"instruction": f"Say {word}.", "output": f"{word.capitalize()}!"}) + "\n"
                for word in ["hello", "yes", "blue", "green", "red", "one", "two", "hello"])  # one repeat: dedupe
KILLS = {"worker": 3, "web": 3, "redis": 3}
RUN_TIMEOUT_S = 420


@pytest.fixture
def chaos_stack(tmp_path, tiny_model):
    # Every kill of the worker may hit the same job: it must still have a start left, so that each job's
    # end is decided by its work, not by how the kills fell.
    stack = start_stack(tmp_path, tiny_model, JOB_MAX_ATTEMPTS=str(KILLS["worker"] + 1))
    supervised = Supervised(stack, Peek(stack))
    yield stack, supervised
    supervised.stop()
    stack.hub.stop()


SERVER_ERRORS: list[str] = []  # answers of 500 and above: each one a bug, whatever else was down


def _retry(call, what: str, timeout: float = 120):
    """What a user does while the server restarts: try again. (A request cut
    off after the server acted may have done it: the test counts jobs from
    the database, so a repeat is one more job, not a lost one.)"""
    deadline = time.monotonic() + timeout
    while True:
        try:
            response = call()
            if response.status_code < 500:
                return response
            SERVER_ERRORS.append(f"{what}: {response.status_code}")
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, f"{what}: the web server did not answer"
        time.sleep(0.5)


def _new_id(response) -> int:
    assert response.status_code == 302, response.text[:2000]
    return int(response.headers["Location"].rstrip("/").split("/")[-1])


def _train(stack, session, dataset_id, **settings) -> int:
    return _new_id(_retry(lambda: stack.post(session, "/jobs/new/", allow_redirects=False, data={
        "dataset": dataset_id, "base_model": stack.tiny_model_id, "method": "lora", "batch_size": 2,
        "learning_rate": 0.01, "method__rank": 4, "precision": "fp32", **settings}), "new training job"))


def test_every_job_ends_once_through_kills_of_worker_web_and_redis(chaos_stack):
    stack, supervised = chaos_stack
    SERVER_ERRORS.clear()
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 10**6))
    print(f"chaos seed {seed} (replay: CHAOS_SEED={seed})")
    rng = random.Random(seed)
    started = time.monotonic()
    peek = supervised.peek
    session = stack.login()
    dataset_id = stack.upload(session, "chaos.jsonl", PAIRS)

    followed = _train(stack, session, dataset_id, max_steps=16, save_every=4)
    chain = _retry(lambda: stack.post(session, f"/jobs/{followed}/chain/", data={"fold": "1"},
                                      headers={"HX-Request": "true"}), "chain")
    assert chain.status_code == 200, chain.text
    jobs = [followed, *[int(i) for i in re.findall(r'href="/jobs/(\d+)/"', chain.text)]]
    follower = Follower(stack.ws_url(followed), stack.cookie_header(session), peek, followed)
    follower.start()

    # The first kill takes the worker from the followed job two steps after its first checkpoint, so it
    # resumes and records those steps again; the web server and Redis go next, while it runs again, so its
    # follower loses them too. Then the rest.
    rest = [k for k, n in KILLS.items() for _ in range(n - 1)]
    plan = ["worker", *rng.sample(["web", "redis"], 2), *rng.sample(rest, len(rest))]

    def followed_past_checkpoint(picked):
        picked[:] = [followed]
        return peek.statuses()[followed] == "running" and peek.progress_step(followed) >= 6  # checkpoint: step 4

    rampage = Rampage(supervised, peek, rng, plan, first_when=followed_past_checkpoint)
    rampage.start()

    for _ in range(6):
        jobs.append(_train(stack, session, dataset_id, max_steps=rng.choice([4, 6, 8]),
                           save_every=rng.choice([2, 3]), seed=rng.randrange(100)))
    analysed = _retry(lambda: stack.post(session, f"/datasets/{dataset_id}/analyse/", data={
        "base_model": stack.tiny_model_id, "max_length": 48}), "analysis")
    deduped = _retry(lambda: stack.post(session, f"/datasets/{dataset_id}/diet/dedupe/",
                                        data={"dedupe-threshold": "0.8"}), "diet step")
    jobs += [int(re.search(r'data-job-progress data-job="(\d+)"', page.text).group(1)) for page in (analysed, deduped)]
    cancelled = _train(stack, session, dataset_id, max_steps=100000, save_every=5)  # cancelled after the kills
    jobs.append(cancelled)

    deadline = time.monotonic() + RUN_TIMEOUT_S
    evaluated = None
    while True:
        statuses = peek.statuses()  # every job, also one a repeated request made
        if evaluated and all(status in FINISHED for status in statuses.values()):
            break
        assert time.monotonic() < deadline, f"seed {seed}: jobs not finished after {RUN_TIMEOUT_S} s: {statuses}"
        # The endless run keeps the worker busy until every kill is done, however fast the machine.
        endless_running = statuses.get(cancelled) == "running" and peek.has_event(cancelled, "checkpoint")
        if rampage.finished.is_set() and endless_running:
            _retry(lambda: stack.post(session, f"/jobs/{cancelled}/cancel/"), "cancel")
        adapter = peek.artifact_of(jobs[2])
        if evaluated is None and adapter:
            evaluated = _new_id(_retry(lambda: stack.post(session, "/jobs/new/evaluate/", allow_redirects=False, data={
                "artifact": adapter, "dataset": dataset_id, "task": "sft", "max_rows": 4, "generate_rows": 2,
                "max_new_tokens": 4}), "evaluation"))
            jobs.append(evaluated)
        time.sleep(0.3)
    rampage.stop()
    follower.wait(timeout=60)
    supervised.wait_up()
    # A job that ended must stay ended: give the workers' recovery loops time to misjudge one.
    before = peek.last_seqs()
    time.sleep(int(stack.env["JOB_LOST_AFTER_S"]) + 2)
    assert peek.last_seqs() == before, f"seed {seed}: events recorded after every job had ended"

    snapshot = read_snapshot(stack)
    by_id = {job["id"]: job for job in snapshot["jobs"]}
    report = _report(seed, snapshot, supervised, rampage, follower, time.monotonic() - started)
    print(report + "\n" + "\n".join(rampage.log))
    problems = violations(snapshot)
    problems += follower_violations(follower.received, by_id[followed])
    problems += [f"the stream went quiet while seqs {seqs} were stored" for seqs in follower.stalls]
    problems += [f"the server answered {error}" for error in SERVER_ERRORS]
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)
    # The run held what it was meant to: every kill happened, and the followed job was resumed.
    assert dict(supervised.kills) == KILLS, (seed, rampage.log)
    assert {name: supervised.restarts()[name] for name in KILLS} == KILLS, "the supervisor restarted each once"
    assert any("lost" in e["data"].get("message", "") for e in by_id[followed]["events"] if e["kind"] == "status")
    assert by_id[followed]["status"] == "succeeded" and by_id[cancelled]["status"] == "cancelled"
    assert set(jobs) <= set(by_id) and len(by_id) >= 12


def _report(seed, snapshot, supervised, rampage, follower, wall_s) -> str:
    jobs = snapshot["jobs"]
    kinds, ends = {}, {}
    for job in jobs:
        kinds[job["kind"]] = kinds.get(job["kind"], 0) + 1
        ends[job["status"]] = ends.get(job["status"], 0) + 1
    events = [e for job in jobs for e in job["events"]]
    kinds_by_id = {job["id"]: job["kind"] for job in jobs}
    resumed = sum(1 for e in events if e["kind"] == "status" and "lost" in e["data"].get("message", ""))
    lines = [
        f"chaos seed {seed}: {wall_s:.0f} s",
        f"jobs: {len(jobs)} ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}); "
        f"ended: {', '.join(f'{n} {s}' for s, n in sorted(ends.items()))}",
        f"kills (SIGKILL): {', '.join(f'{k} {n}' for k, n in sorted(supervised.kills.items()))}; "
        f"restarts by the supervisor: {', '.join(f'{k} {n}' for k, n in sorted(supervised.restarts().items()))}",
        f"events stored: {len(events)} ({sum(e['superseded'] for e in events)} superseded by resumes); "
        f"jobs taken back from a lost worker: {resumed}",
        f"worker kills interrupted: {', '.join(f'job {j} ({kinds_by_id[j]})' for j in sorted(rampage.hit))}",
        f"followed job: {len(follower.received)} events over {follower.connections} connections",
    ]
    return "\n".join(lines)
