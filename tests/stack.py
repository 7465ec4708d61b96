"""A real studio for integration and browser tests: the embedded Redis
server, uvicorn and the launcher's Celery workers (jobs, dataset work, the
interactive queue) as separate processes, on 127.0.0.1,
with their own DATA_DIR and database (SQLite there, or, on the suite's
Postgres pass, a new database on that server), and the tiny model registered."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from studio import launcher
from tests.database_use import refuse_in_database_free_test
from tests.hub_server import HubServer
from tests.postgres import create_database, is_postgres

REPO = Path(__file__).resolve().parent.parent
ADMIN = ("admin", "admin-pass-123")
OUTSIDER = ("mallory", "mallory-pass-123")

SET_UP = """
import io, re
from django.core.management import call_command
call_command("migrate", interactive=False)
call_command("studio_setup", skip_bundled_model=True)
out = io.StringIO()
call_command("register_base_model", "Tiny Llama (test)", {tiny_model!r}, stdout=out)
print("tiny model #" + re.search(r"#(\\d+)", out.getvalue()).group(1))
"""
MAKE_OUTSIDER = f"""
from studio.accounts.models import Team, Membership
from studio.accounts.services import user_create
team, _ = Team.objects.get_or_create(slug="rivals", defaults={{"name": "Rivals"}})
user_create(username="{OUTSIDER[0]}", password="{OUTSIDER[1]}", team=team, role=Membership.Role.ADMIN)
"""


@dataclass
class Stack:
    data_dir: Path
    env: dict
    base_url: str = ""
    procs: list = field(default_factory=list)
    worker_name: str = "test-worker@%h"
    dataset_worker_name: str = "dataset@%h"  # the worker of DATASET_POOL (analyses, diet steps), as the launcher has
    tiny_model_id: int = 0
    tiny_model_path: str = ""
    hub: HubServer | None = None

    def manage(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, f"manage.py {args[0]} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def login(self, credentials=ADMIN) -> requests.Session:
        session = requests.Session()
        session.get(f"{self.base_url}/accounts/login/")
        response = session.post(f"{self.base_url}/accounts/login/", allow_redirects=False, data={
            "username": credentials[0], "password": credentials[1],
            "csrfmiddlewaretoken": session.cookies["csrftoken"]})
        assert response.status_code == 302, "login failed"
        return session

    def post(self, session: requests.Session, path: str, **kwargs) -> requests.Response:
        data = {"csrfmiddlewaretoken": session.cookies["csrftoken"], **kwargs.pop("data", {})}
        return session.post(f"{self.base_url}{path}", data=data, **kwargs)

    def start_job(self, session, dataset_id: int, **settings) -> int:
        response = self.post(session, "/jobs/new/", allow_redirects=False, data={
            "dataset": dataset_id, "base_model": self.tiny_model_id, "method": "lora", "batch_size": 2,
            "learning_rate": 0.01, "method__rank": 4, "precision": "fp32", **settings})
        assert response.status_code == 302, response.text
        return int(response.headers["Location"].rstrip("/").split("/")[-1])

    def upload(self, session, name: str, content: str) -> int:
        response = self.post(session, "/datasets/", files={"file": (name, content.encode())}, allow_redirects=False)
        assert response.status_code == 302, response.text
        return int(response.headers["Location"].rstrip("/").split("/")[-1])

    def job_state(self, session, job_id: int, after: int = 0) -> dict:
        return session.get(f"{self.base_url}/jobs/{job_id}/events/?after={after}").json()

    def wait_for_status(self, session, job_id: int, statuses, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(session, job_id)
            if state["status"] in statuses:
                return state
            time.sleep(0.3)
        raise AssertionError(f"job {job_id} still {state['status']} after {timeout} s")

    def cookie_header(self, session) -> str:
        return "; ".join(f"{k}={v}" for k, v in session.cookies.items())

    def ws_url(self, job_id: int) -> str:
        return self.base_url.replace("http://", "ws://") + f"/ws/jobs/{job_id}/"

    def start_worker(self, name: str | None = None):
        proc = self._spawn_worker(name)
        self._wait_for_worker(proc, self.worker_name, "worker")
        return proc

    def start_dataset_worker(self, name: str | None = None):
        proc = self._spawn_dataset_worker(name)
        self._wait_for_worker(proc, self.dataset_worker_name, "dataset")
        return proc

    def start_playground_worker(self):
        proc = self._spawn_playground_worker()
        self._wait_for_worker(proc, "playground@%h", "playground")
        return proc

    def _spawn_worker(self, name: str | None = None):
        self.worker_name = name or self.worker_name
        self.worker = self._spawn("worker", self.worker_name, "worker")
        return self.worker

    def _spawn_dataset_worker(self, name: str | None = None):
        self.dataset_worker_name = name or self.dataset_worker_name
        self.dataset_worker = self._spawn("dataset worker", self.dataset_worker_name, "dataset")
        return self.dataset_worker

    def _spawn_playground_worker(self):
        self.playground = self._spawn("playground worker", "playground@%h", "playground")
        return self.playground

    @property
    def redis_port(self) -> int:
        return int(self.env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])

    @property
    def web_port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def heal(self) -> list[str]:
        """Start again whatever a test left dead (Redis on its old port, the web server on its old port, the
        three workers under their current names), so that one failed test that killed a process and stopped
        before starting it again fails alone, not every test after it on this shared stack. Returns what it
        started; tests/conftest.py says so in the test's output."""
        started = []
        if self.procs[0].poll() is not None:
            self.procs[0], _ = launcher.start_redis(self.data_dir, port=self.redis_port)
            started.append("redis")
        if self.web.poll() is not None:
            self.web = launcher.start_web(self.env, "127.0.0.1", self.web_port, **_quiet(self.data_dir, "web"))
            self.procs.append(self.web)
            launcher.wait_for_port("127.0.0.1", self.web_port, launcher.WEB_START_TIMEOUT_S)
            started.append("web")
        for name, proc, start in (("worker", self.worker, self.start_worker),
                                  ("playground worker", self.playground, self.start_playground_worker),
                                  ("dataset worker", self.dataset_worker, self.start_dataset_worker)):
            if proc.poll() is not None:
                start()
                started.append(name)
        return started

    def _spawn(self, what: str, name: str, log: str):
        """Start the launcher's worker called ``what`` (on its queue) as node ``name``, logging to ``log``.log."""
        proc = launcher.start_worker(self.env, self.queue_of(what), name=name, **_quiet(self.data_dir, log))
        self.procs.append(proc)
        return proc

    def queue_of(self, what: str) -> str:
        """The queue the launcher's worker called ``what`` consumes (launcher.worker_layout)."""
        return next(queue for name, queue, _ in launcher.worker_layout(self.env) if name == what)

    def _wait_for_worker(self, proc, name: str, log: str) -> None:
        deadline = time.monotonic() + launcher.WORKER_START_TIMEOUT_S
        while not launcher.worker_answers(self.env["REDIS_URL"], name):
            assert proc.poll() is None, f"the {log} worker died: {self.log(log)[-3000:]}"
            assert time.monotonic() < deadline, f"the {log} worker did not start"
            time.sleep(0.2)

    def log(self, name: str) -> str:
        return (self.data_dir / f"{name}.log").read_text(errors="replace")


def _quiet(data_dir: Path, name: str) -> dict:
    handle = open(data_dir / f"{name}.log", "ab")
    return {"stdout": handle, "stderr": subprocess.STDOUT}


def start_stack(data_dir: Path, tiny_model: Path, **extra_env: str) -> Stack:
    refuse_in_database_free_test("starts a studio (which has a database)")
    redis_proc, redis_url = launcher.start_redis(data_dir)
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "studio.settings", "DATA_DIR": str(data_dir),
           "REDIS_URL": redis_url, "STUDIO_ADMIN_USERNAME": ADMIN[0], "STUDIO_ADMIN_PASSWORD": ADMIN[1],
           "ALLOWED_HOSTS": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1",
           # a lost worker's job is taken back within seconds, not minutes
           "JOB_HEARTBEAT_S": "1", "JOB_LOST_AFTER_S": "5",
           # the tests' webhook receivers listen on loopback, as an allowed intranet receiver would
           "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
           # and the fake OpenAI-compatible judge (tests/judge_server.py), as an allowed intranet judge would
           "JUDGE_ALLOWED_HOSTS": "127.0.0.1", **extra_env}
    if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
        # Other xdist workers train on the same cores: the stack's Celery
        # workers take their share of threads, no more (tests/conftest.py).
        from tests.conftest import threads_per_process

        env["OMP_NUM_THREADS"] = str(threads_per_process())
    for variable in ("DATABASE_URL", "MEDIA_ROOT", "SECRET_KEY"):
        env.pop(variable, None)
    if is_postgres(os.environ.get("DATABASE_URL")):  # the suite's Postgres pass: a database of its own there
        name = re.sub(r"\W", "_", f"stack_{data_dir.name}_{os.getpid()}")
        env["DATABASE_URL"] = create_database(os.environ["DATABASE_URL"], name)
    hub = HubServer()  # the stack's model hub (tests add repos to stack.hub.repos)
    env["HF_ENDPOINT"] = hub.start()
    stack = Stack(data_dir=data_dir, env=env, procs=[redis_proc], hub=hub)
    try:
        # One Django process runs the four set-up commands (each used to start its own).
        registered = stack.manage("shell", "-c", SET_UP.format(tiny_model=str(tiny_model)) + MAKE_OUTSIDER)
        stack.tiny_model_path = str(tiny_model)
        stack.tiny_model_id = int(re.search(r"tiny model #(\d+)", registered).group(1))
        # The web server and the three workers start together and are waited for after.
        port = launcher.free_port()
        stack.web = launcher.start_web(env, "127.0.0.1", port, **_quiet(data_dir, "web"))
        stack.procs.append(stack.web)
        worker, playground = stack._spawn_worker(), stack._spawn_playground_worker()
        dataset_worker = stack._spawn_dataset_worker()
        launcher.wait_for_port("127.0.0.1", port, launcher.WEB_START_TIMEOUT_S)
        stack.base_url = f"http://127.0.0.1:{port}"
        stack._wait_for_worker(worker, stack.worker_name, "worker")
        stack._wait_for_worker(playground, "playground@%h", "playground")
        stack._wait_for_worker(dataset_worker, stack.dataset_worker_name, "dataset")
    except BaseException:
        launcher.stop_all(stack.procs)
        raise
    return stack



def web_server_pids(pid: int) -> list[int]:
    """The processes serving the web port started as ``pid``: itself, or, under WEB_PROCESSES > 1, the
    processes uvicorn's supervisor spawned (not its multiprocessing helpers, such as the resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    spawned = [int(child) for child in (children.read_text().split() if children.exists() else [])]
    serving = [child for child in spawned if b"spawn_main" in _cmdline(child)]
    return serving or [pid]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it ended meanwhile
        return b""
