"""The launcher keeps the studio up: a child process that dies is started
again after a back-off while the others keep running, and only a crash loop
stops everything. Real child processes, killed with SIGKILL. And which
workers it starts: dataset work gets one of its own."""

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from studio import launcher
from tests.stack import web_server_pids


def sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def test_a_killed_child_is_started_again_and_the_others_keep_running(monkeypatch, capsys):
    monkeypatch.setattr(launcher, "RESTART_BACKOFF_S", (0.1,))
    worker, web = launcher.Child("worker", sleeper).launch(), launcher.Child("web", sleeper).launch()
    first_worker, web_pid = worker.proc.pid, web.proc.pid
    try:
        worker.proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        code = launcher.supervise([worker, web], poll_s=0.05,
                                  until=lambda: worker.proc.pid != first_worker or time.monotonic() > deadline)
        assert code == 0 and worker.proc.pid != first_worker and worker.proc.poll() is None
        assert web.proc.pid == web_pid and web.proc.poll() is None  # untouched
        assert "The worker process exited (exit code -9); starting it again" in capsys.readouterr().err
    finally:
        launcher.stop_all([worker.proc, web.proc], grace=5)


def test_a_crash_loop_stops_with_a_message_naming_the_process(monkeypatch, capsys):
    monkeypatch.setattr(launcher, "RESTART_BACKOFF_S", (0.05,))
    monkeypatch.setattr(launcher, "CRASH_LOOP_RESTARTS", 3)
    broken = launcher.Child("worker", lambda: subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])).launch()
    deadline = time.monotonic() + 60
    assert launcher.supervise([broken], poll_s=0.05, until=lambda: time.monotonic() > deadline) == 1
    assert len(broken.restarts) == 3
    assert "the worker process keeps exiting (exit code 3, 3 restarts" in capsys.readouterr().err


def test_the_launcher_starts_a_worker_for_dataset_work_apart_from_the_others():
    queues = {what: queue for what, queue, _ in launcher.worker_layout({})}
    assert queues == {"worker": "default", "playground worker": "interactive", "dataset worker": "dataset"}
    assert len({node for _, _, node in launcher.worker_layout({})}) == 3  # three node names: none replaces another
    moved = {queue for _, queue, _ in launcher.worker_layout({"DATASET_POOL": "cpu", "DEFAULT_DEVICE_POOL": "gpu"})}
    assert moved == {"gpu", "interactive", "cpu"}
    # Settings that send dataset work to a queue a worker already consumes start no worker for it.
    assert [what for what, _, _ in launcher.worker_layout({"DATASET_POOL": "interactive"})] == [
        "worker", "playground worker"]


def test_web_processes_serve_one_port_and_a_bad_count_is_refused(tmp_path):
    """WEB_PROCESSES=2: uvicorn's supervisor binds the port once and two processes accept on it (what
    bench/ws_fanout.py measures with 1,000 viewers); anything but a count from 1 to 64 stops the start."""
    for bad in ("two", "0", "-1", "65"):
        with pytest.raises(SystemExit, match=f"WEB_PROCESSES must be a whole number from 1 to 64, not '{bad}'"):
            launcher.web_processes({"WEB_PROCESSES": bad})
    assert launcher.web_processes({}) == 1 and launcher.web_processes({"WEB_PROCESSES": " 3 "}) == 3
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "studio.settings", "DATA_DIR": str(tmp_path),
           "WEB_PROCESSES": "2"}
    for variable in ("DATABASE_URL", "REDIS_URL", "MEDIA_ROOT"):
        env.pop(variable, None)
    port = launcher.free_port()
    with open(tmp_path / "web.log", "wb") as log:
        web = launcher.start_web(env, "127.0.0.1", port, stdout=log, stderr=subprocess.STDOUT)
    try:
        launcher.wait_for_port("127.0.0.1", port, launcher.WEB_START_TIMEOUT_S)
        servers = web_server_pids(web.pid)
        assert len(servers) == 2 and web.pid not in servers, (tmp_path / "web.log").read_text()
        opener = urllib.request.build_opener(NoRedirect)
        for _ in range(4):  # an anonymous visitor is sent to the login page, by whichever process accepts
            with pytest.raises(urllib.error.HTTPError) as redirect:
                opener.open(f"http://127.0.0.1:{port}/", timeout=30)
            assert redirect.value.code == 302 and "/accounts/login/" in redirect.value.headers["Location"]
    finally:
        launcher.stop_all([web], grace=10)
    assert not any(Path(f"/proc/{pid}").exists() for pid in servers), "a web process outlived its supervisor"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Shows a redirect as the answer rather than following it."""

    def redirect_request(self, *args, **kwargs):
        return None
