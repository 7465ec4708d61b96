"""One worker process of tests/web/test_pool_gang.py: the real registry
thread (worker/registry.py: it reports WORKER_DEVICES devices at
WORKER_ADDRESS) and the real ``worker.runner.run_job`` in a loop, as Celery
wake-ups would call it, until the pool has nothing queued or running. It
prints what each claim or seat came to ("NAME: succeeded", "NAME: followed").

    python -m tests.web.pool_worker POOL WORKER_NAME GO_FILE

It registers, then waits for GO_FILE, so that both workers are registered
(each sees the other idle) before either claims.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

DEADLINE_S = 600  # a worker never outlives a stuck test


def main(pool: str, name: str, go_file: str) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.test_settings")
    import django

    django.setup()
    from studio.jobs.models import Job
    from worker.registry import start_registry, stop_registry
    from worker.runner import run_job

    start_registry(name, pool)
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not Path(go_file).exists():
            time.sleep(0.02)
        while time.monotonic() < deadline:
            result = run_job(0, worker_name=name, pool=pool)
            if result != "skipped":
                print(f"{name}: {result}", flush=True)
                continue
            if not Job.objects.filter(device_pool=pool, status__in=["queued", "running"]).exists():
                return
            time.sleep(0.1)  # the job waits for its followers, or a follower for its head's claim
        sys.exit(f"{name}: the pool still had work after {DEADLINE_S} s")
    finally:
        stop_registry()


if __name__ == "__main__":
    main(*sys.argv[1:])
