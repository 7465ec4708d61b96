"""The team queue with real processes: 30 jobs from 3 users through 2 workers."""

import json
import random
from collections import Counter

import pytest

from studio import launcher
from tests.stack import _quiet

pytestmark = pytest.mark.integration

FINISHED = {"succeeded", "failed", "cancelled"}
ROWS = "".join(json.dumps({"instruction": f"Say {w}.", "output": f"{w}!"}) + "\n" for w in ("a", "b", "c", "d"))
MEMBERS = f"""
from studio.accounts.models import Membership
from studio.accounts.services import default_team, user_create
for name in ("queue-bea", "queue-cid"):
    user_create(username=name, password=name + "-pass-123", team=default_team(), role=Membership.Role.MEMBER)
"""


def test_thirty_jobs_from_three_users_through_two_workers_each_end_exactly_once(stack):
    stack.manage("shell", "-c", MEMBERS)
    users = [stack.login(), stack.login(("queue-bea", "queue-bea-pass-123")),
             stack.login(("queue-cid", "queue-cid-pass-123"))]
    dataset_id = stack.upload(users[0], "queue.jsonl", ROWS)
    second = launcher.start_worker(stack.env, name="queue-second@%h", **_quiet(stack.data_dir, "queue-second"))
    stack.procs.append(second)
    try:
        jobs = {}  # job id -> the session of its owner
        for round_ in range(10):
            for user in users:
                jobs[stack.start_job(user, dataset_id, max_steps=1, save_every=1000, seed=round_)] = user
        # Late in the queue, so still queued when cancelled (a job cancelled while
        # saving its output may rightly end succeeded).
        to_cancel = set(random.Random(0).sample(sorted(jobs)[10:], 6))
        for job_id in to_cancel:
            stack.post(jobs[job_id], f"/jobs/{job_id}/cancel/")

        states = {job_id: stack.wait_for_status(user, job_id, FINISHED, timeout=600) for job_id, user in jobs.items()}
    finally:
        second.terminate()
        second.wait(timeout=60)

    ran_on = Counter()
    for job_id, state in states.items():
        statuses = [e["data"] for e in state["events"] if e["kind"] == "status"]
        ends = [s["status"] for s in statuses if s["status"] in FINISHED]
        assert len(ends) == 1, (job_id, statuses)  # ends exactly once
        starts = [s for s in statuses if s["status"] == "running"]
        assert len(starts) <= 1, (job_id, statuses)  # never run twice
        ran_on.update(s["worker"].split("@")[0] for s in starts)
        if job_id in to_cancel:
            assert ends == ["cancelled"], (job_id, statuses)
        else:
            assert ends == ["succeeded"], (job_id, statuses)
            assert [e["data"]["step"] for e in state["events"] if e["kind"] == "metrics"] == [1]
    # Both workers took jobs (the stack's own worker may have been replaced by an earlier test).
    assert set(ran_on) == {stack.worker_name.split("@")[0], "queue-second"}, ran_on
