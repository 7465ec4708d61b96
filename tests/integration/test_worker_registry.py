"""The worker registry with real Celery workers: each worker registers
itself, beats with its current job, says goodbye on a clean shutdown and is
shown lost when killed.

NEEDS THE WIRING in worker/tasks.py (worker_ready → start_registry,
worker_shutdown → stop_registry) and worker/runner.py (``current_job_id``
set while a job runs), as given in the issue-6 report. Without it no worker
ever registers and every test here fails on its first wait.
"""

import re
import signal
import subprocess
import time

import pytest
from celery.utils.nodenames import host_format

from studio import launcher

pytestmark = pytest.mark.integration

PAIRS = "".join(f'{{"instruction": "Say {w}.", "output": "{w}!"}}\n' for w in ["hi", "yes", "blue", "green"])
POOL = "registry-test"  # a queue no job goes to: these workers only come and go


@pytest.fixture(scope="module")
def admin(stack):
    return stack.login()


def row(stack, session, name: str) -> str:
    """The worker's table row on the live-refreshed partial ("" if absent)."""
    table = session.get(f"{stack.base_url}/workers/table/")
    assert table.status_code == 200, table.status_code
    found = re.search(rf'<tr data-worker="{re.escape(host_format(name))}".*?</tr>', table.text, re.S)
    return found.group(0) if found else ""


def wait_for_row(stack, session, name: str, predicate, what: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = row(stack, session, name)
        if current and predicate(current):
            return current
        time.sleep(0.5)
    raise AssertionError(f"worker {name}: never {what}; last row: {current or '(none)'}")


def test_stack_workers_register_with_their_device(stack, admin):
    for name, pool in ((stack.worker_name, "default"), ("playground@%h", "interactive"),
                       (stack.dataset_worker_name, "dataset")):
        current = wait_for_row(stack, admin, name, lambda r: 'data-state="alive"' in r, "alive")
        assert f"<td>{pool}</td>" in current
        assert re.search(r"<td>(CPU: \d+ cores|CUDA: )", current), current
    memory = stack.manage("shell", "-c", "from studio.workers.selectors import pool_device_memory_mib; "
                                         "print(pool_device_memory_mib('default'))")
    assert int(memory.strip().splitlines()[-1]) > 0


def test_a_running_job_shows_on_its_worker(stack, admin):
    dataset_id = stack.upload(admin, "registry.jsonl", PAIRS)
    job_id = stack.start_job(admin, dataset_id, max_steps=2000)  # long enough to be seen running
    link = f'href="/jobs/{job_id}/"'
    wait_for_row(stack, admin, stack.worker_name, lambda r: link in r, f"showed job {job_id}")
    stack.post(admin, f"/jobs/{job_id}/cancel/")
    stack.wait_for_status(admin, job_id, {"cancelled", "succeeded", "failed"})
    wait_for_row(stack, admin, stack.worker_name, lambda r: "<td>idle</td>" in r, "went idle")


def test_killed_worker_is_lost_restarted_alive_and_stopped_cleanly(stack, admin):
    name = "registry-a@%h"
    log = open(stack.data_dir / "registry-worker.log", "ab")
    proc = launcher.start_worker(stack.env, POOL, name=name, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_row(stack, admin, name, lambda r: 'data-state="alive"' in r, "alive")
        proc.send_signal(signal.SIGKILL)  # no goodbye: only the silence tells
        proc.wait(30)
        # JOB_LOST_AFTER_S is 5 s in the test stack.
        wait_for_row(stack, admin, name, lambda r: 'data-state="lost"' in r, "lost", timeout=30)

        # The same name takes its row back.
        proc = launcher.start_worker(stack.env, POOL, name=name, stdout=log, stderr=subprocess.STDOUT)
        wait_for_row(stack, admin, name, lambda r: 'data-state="alive"' in r, "alive again")
        proc.send_signal(signal.SIGTERM)  # Celery's warm shutdown: worker_shutdown runs
        proc.wait(60)
        wait_for_row(stack, admin, name, lambda r: 'data-state="stopped"' in r, "stopped", timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        log.close()
