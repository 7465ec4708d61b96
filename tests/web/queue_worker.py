"""One worker process of tests/web/test_queue_concurrency.py: the real claim
(``worker.runner.run_job``: ``job_claim_next``, heartbeat, the kind's
function, ``job_finish``) in a loop, against the test database named by
DATABASE_URL, until the pool has nothing queued or running.

    python -m tests.web.queue_worker POOL WORKER_NAME GO_FILE

It waits for GO_FILE before its first claim, so that every worker process
has started (imported Django and torch) and they claim at the same time.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

DEADLINE_S = 240  # a worker never outlives a stuck test


def run_slowly(job, sink) -> tuple[str, str]:
    """A few progress events with a pause between them: long enough that the
    other workers claim meanwhile and the test reorders the queue under them."""
    from tuning.events import ProgressEvent

    steps = job.config["steps"]
    for done in range(1, steps + 1):
        time.sleep(job.config["pause_s"])
        sink.emit(ProgressEvent(phase="working", done=done, total=steps, unit="steps"))
    return "succeeded", f"{steps} steps"


def main(pool: str, name: str, go_file: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.test_settings")
    import django

    django.setup()
    from studio.jobs.kinds import JobKind, register_job_kind
    from studio.jobs.models import Job
    from worker.runner import run_job

    register_job_kind(JobKind(name="slow", label="Slow", run="tests.web.queue_worker.run_slowly"))
    deadline = time.monotonic() + DEADLINE_S
    while not Path(go_file).exists():
        time.sleep(0.02)
    while time.monotonic() < deadline:
        if run_job(0, worker_name=name, pool=pool) == "skipped":
            if not Job.objects.filter(device_pool=pool, status__in=["validating", "queued", "running"]).exists():
                return
            time.sleep(0.05)  # a job held back by its team's quota: look again soon
    sys.exit(f"{name}: the pool still had work after {DEADLINE_S} s")


if __name__ == "__main__":
    main(*sys.argv[1:])
