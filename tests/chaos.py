"""Chaos on the real stack (tests/stack.py): the launcher's own supervisor
(``studio.launcher.supervise``) keeps Redis, the web server and the Celery
workers running while the test SIGKILLs them at seeded-random points, a
WebSocket client follows one job across it all, and ``violations`` judges
what the studio holds afterwards (tests/chaos_audit.py reads it)."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import websockets

from studio import launcher
from studio.jobs.kinds import JOB_KINDS
from tests.postgres import is_postgres
from tests.stack import Stack, _quiet

FINISHED = {"succeeded", "failed", "cancelled"}
KILLABLE = ("worker", "web", "redis")
# Events of one training step: a run resumed from a checkpoint records them again for the later steps,
# and the earlier ones are superseded (studio/jobs/services.py: STEP_EVENT_KINDS).
STEP_KINDS = ("metrics", "eval", "samples", "checkpoint")
UP_TIMEOUT_S = 120.0  # a restarted worker imports Django and torch


class Supervised:
    """The stack's processes as the launcher's children, restarted by
    ``launcher.supervise`` (with its back-off) in a thread of this process."""

    def __init__(self, stack: Stack, peek: "Peek"):
        self.stack, self.peek = stack, peek
        redis, web, worker, playground, dataset = stack.procs
        env, data_dir = stack.env, stack.data_dir
        self.redis_port, self.web_port = stack.redis_port, stack.web_port

        def worker_start(what: str, name: str, log: str):
            return lambda: launcher.start_worker(env, stack.queue_of(what), name=name, **_quiet(data_dir, log))

        self.children = {
            "redis": launcher.Child("redis", lambda: launcher.start_redis(data_dir, self.redis_port)[0], redis),
            "web": launcher.Child("web", lambda: launcher.start_web(env, "127.0.0.1", self.web_port,
                                                                    **_quiet(data_dir, "web")), web),
            "worker": launcher.Child("worker", worker_start("worker", stack.worker_name, "worker"), worker),
            "playground": launcher.Child("playground worker", worker_start(
                "playground worker", "playground@%h", "playground"), playground),
            "dataset": launcher.Child("dataset worker", worker_start(
                "dataset worker", stack.dataset_worker_name, "dataset"), dataset),
        }
        self.kills: Counter = Counter()
        self.stopping = threading.Event()
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self.thread.start()

    def _supervise(self) -> None:
        self.exit_code = launcher.supervise(list(self.children.values()), poll_s=0.2, until=self.stopping.is_set)

    def kill(self, name: str) -> bool:
        proc = self.children[name].proc
        if proc.poll() is not None:
            return False  # died already: the supervisor has it
        proc.kill()  # SIGKILL: no goodbye, no status update
        proc.wait()  # gone before anyone asks whether it is up
        self.kills[name] += 1
        return True

    def restarts(self) -> dict[str, int]:
        return {name: len(child.restarts) for name, child in self.children.items()}

    def is_up(self, name: str) -> bool:
        proc = self.children[name].proc
        if proc.poll() is not None:
            return False
        if name == "redis":
            return launcher._redis_answers(self.stack.env["REDIS_URL"])
        if name == "web":
            return launcher.port_is_open("127.0.0.1", self.web_port)
        # A worker busy with a job answers no Celery ping (solo pool); its registry thread beats regardless.
        return self.peek.worker_registered(proc.pid)

    def wait_up(self, names=KILLABLE) -> None:
        deadline = time.monotonic() + UP_TIMEOUT_S
        for name in names:
            while not self.is_up(name):
                assert self.exit_code is None, f"the launcher's supervisor gave up (exit code {self.exit_code})"
                assert time.monotonic() < deadline, f"the {name} process did not come back"
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop supervising, then every process (Redis last), as the launcher's shutdown does."""
        self.stopping.set()
        self.thread.join(timeout=60)
        procs = [child.proc for child in self.children.values()]  # Redis first: stopped last
        for proc in procs[1:]:
            if proc.poll() is None:
                proc.terminate()
        launcher.stop_all(procs)


class Peek:
    """Reads the studio's database directly (SQLite, or Postgres on the
    suite's Postgres pass), so the test can look while the web server is down."""

    def __init__(self, stack: Stack):
        self.path = stack.data_dir / "studio.sqlite3"
        self.postgres_url = stack.env.get("DATABASE_URL") if is_postgres(stack.env.get("DATABASE_URL")) else None

    def _rows(self, sql: str, *args) -> list[tuple]:
        if self.postgres_url:
            import psycopg

            with psycopg.connect(self.postgres_url) as db:
                return db.execute(sql.replace("?", "%s"), args).fetchall()
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30) as db:
            return db.execute(sql, args).fetchall()

    def statuses(self) -> dict[int, str]:
        return dict(self._rows("SELECT id, status FROM jobs_job"))

    def running_on(self, node: str) -> list[int]:
        """The jobs running on the worker of that node name ("%h" matches any host)."""
        return [row[0] for row in self._rows("SELECT id FROM jobs_job WHERE status = 'running' AND worker_name LIKE ?",
                                             node.replace("%h", "%"))]

    def progress_step(self, job_id: int) -> int:
        return self._rows("SELECT progress_step FROM jobs_job WHERE id = ?", job_id)[0][0]

    def has_event(self, job_id: int, kind: str) -> bool:
        return bool(self._rows("SELECT 1 FROM jobs_jobevent WHERE job_id = ? AND kind = ? LIMIT 1", job_id, kind))

    def artifact_of(self, job_id: int) -> int | None:
        rows = self._rows("SELECT id FROM artifacts_artifact WHERE job_id = ? ORDER BY id", job_id)
        return rows[0][0] if rows else None

    def worker_registered(self, pid: int) -> bool:
        return bool(self._rows("SELECT 1 FROM workers_workernode WHERE pid = ? AND stopped_at IS NULL", pid))

    def last_seqs(self) -> dict[int, int]:
        return dict(self._rows("SELECT id, last_seq FROM jobs_job"))


@dataclass
class Rampage:
    """Kills at seeded-random points: each of ``plan`` in turn, once every
    process is back up and after a random pause; a worker only while it runs
    a job. ``first_when(picked)`` holds the first kill back until it
    returns True, having put the job it will interrupt in ``picked``."""

    supervised: Supervised
    peek: Peek
    rng: random.Random
    plan: list[str]
    first_when: object = None
    pause_s: tuple[float, float] = (1.0, 4.0)
    log: list[str] = field(default_factory=list)
    hit: set = field(default_factory=set)  # the jobs a worker kill interrupted
    waited_since: float = 0.0
    stopped: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)  # the plan is done (or given up)
    error: BaseException | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="rampage", daemon=True)
        self.thread.start()

    def _wait(self, condition, timeout: float = UP_TIMEOUT_S) -> bool:
        deadline = time.monotonic() + timeout
        while not self.stopped.is_set() and time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.1)
        return False

    def _run(self) -> None:
        try:
            for index, target in enumerate(self.plan):
                self.supervised.wait_up()
                if self.stopped.wait(self.rng.uniform(*self.pause_s)):
                    return
                self.waited_since = time.monotonic()
                running = []
                if index == 0 and self.first_when:  # at once when it holds: a fast machine finishes the job soon
                    if not self._wait(lambda: self.first_when(running)):
                        return
                elif target == "worker" and not self._wait(lambda: self._pick_running(running), timeout=60):
                    return
                killed = self.supervised.kill(target)
                self.hit.update(running)
                self.log.append(f"{time.monotonic() - self.started:6.1f} s  kill -9 {target}"
                                + (f" (running job {running[0]})" if running else "") + ("" if killed else ": dead"))
            self.supervised.wait_up()
        except BaseException as exc:  # reported by the test, never lost in this thread
            self.error = exc
        finally:
            self.finished.set()

    def _pick_running(self, picked: list) -> bool:
        """A running job for a worker kill: one no kill has hit yet if one comes within 20 s,
        so that the kills spread over the kinds of job rather than all land on the longest."""
        running = self.peek.running_on(self.supervised.stack.worker_name)
        fresh = [i for i in running if i not in self.hit]
        if fresh or (running and time.monotonic() > self.waited_since + 20):
            picked[:] = fresh or running
            return True
        return False

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=UP_TIMEOUT_S)
        if self.error:
            raise self.error


@dataclass
class Follower:
    """A WebSocket client following one job as the page does: it reconnects
    after every drop saying the last seq it has, and keeps everything it is
    sent (duplicates included, unlike the page, which skips them)."""

    url: str
    cookie: str
    peek: Peek
    job_id: int
    received: list = field(default_factory=list)
    connections: int = 0
    stalls: list = field(default_factory=list)  # an open socket that went quiet while events were stored
    idle_s: float = 15.0
    error: BaseException | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._follow()), name="follower", daemon=True)
        self.thread.start()

    @property
    def last_seq(self) -> int:
        return self.received[-1]["seq"] if self.received else 0

    def finished(self) -> bool:
        return any(e["kind"] == "status" and e["data"]["status"] in FINISHED for e in self.received)

    async def _follow(self) -> None:
        try:
            while not self.finished():
                try:
                    await self._session()
                except (OSError, asyncio.TimeoutError, websockets.WebSocketException):
                    await asyncio.sleep(0.3)
        except BaseException as exc:
            self.error = exc

    async def _session(self) -> None:
        headers = {"Cookie": self.cookie, "Origin": self.url.replace("ws", "http", 1)}
        async with websockets.connect(self.url, additional_headers=headers, open_timeout=10) as socket:
            self.connections += 1
            await socket.send(json.dumps({"after": self.last_seq}))
            while not self.finished():
                try:
                    message = json.loads(await asyncio.wait_for(socket.recv(), self.idle_s))
                except asyncio.TimeoutError:
                    stored = self.peek.last_seqs().get(self.job_id, 0)
                    if stored > self.last_seq:
                        self.stalls.append((self.last_seq, stored))
                    raise
                self.received.extend(message if isinstance(message, list) else [message])

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)
        if self.error:
            raise self.error


def read_snapshot(stack: Stack) -> dict:
    out = stack.manage("shell", "-c", "from tests.chaos_audit import main; main()")
    return json.loads(out.split("CHAOS-SNAPSHOT ", 1)[1])


# ------------------------------------------------------------- the verdict

NOTIFYING_KINDS = {name for name, kind in JOB_KINDS.items() if kind.notifies}


def _status_violations(name: str, job: dict) -> list[str]:
    events = job["events"]
    problems = []
    seqs = [e["seq"] for e in events]
    if seqs != list(range(1, len(seqs) + 1)) or job["last_seq"] != len(seqs):
        problems.append(f"{name}: seqs are not 1..{job['last_seq']} once each: {seqs}")
    statuses = [e for e in events if e["kind"] == "status"]
    ends = [e for e in statuses if e["data"]["status"] in FINISHED]
    if job["status"] not in FINISHED:
        problems.append(f"{name}: left {job['status']}")
    if len(ends) != 1:
        problems.append(f"{name}: {len(ends)} end events: {[(e['seq'], e['data']) for e in ends]}")
    elif ends[0] is not events[-1]:
        after = [e["seq"] for e in events if e["seq"] > ends[0]["seq"]]
        problems.append(f"{name}: events recorded after its end: {after}")
    elif ends[0]["data"]["status"] != job["status"] or not job["finished"]:
        problems.append(f"{name}: ended {ends[0]['data']['status']} but the row says {job['status']}")
    if any(e["superseded"] for e in statuses):
        problems.append(f"{name}: a status event was superseded")
    order = [e["data"]["status"] for e in statuses]
    claims = order.count("running")
    if claims != job["attempts"]:
        problems.append(f"{name}: {claims} claims for {job['attempts']} attempts")
    for before, after in zip(order, order[1:]):
        if after == "running" and before != "queued":
            problems.append(f"{name}: claimed while {before}: {order}")
    return problems


def _step_violations(name: str, job: dict) -> list[str]:
    """Among the events readers show (not superseded), each step once; a
    training run's metrics are exactly steps 1..N."""
    live = [e for e in job["events"] if not e["superseded"]]
    problems = []
    for kind in STEP_KINDS:
        steps = Counter(e["data"]["step"] for e in live if e["kind"] == kind and "step" in e["data"])
        twice = sorted(step for step, count in steps.items() if count > 1)
        if twice:
            problems.append(f"{name}: {kind} of steps {twice} shown more than once")
    unstepped = Counter(e["kind"] for e in live if e["kind"] in ("eval", "artifact") and "step" not in e["data"])
    if any(count > 1 for count in unstepped.values()):
        problems.append(f"{name}: results shown more than once: {dict(unstepped)}")
    metrics = [e["data"]["step"] for e in live if e["kind"] == "metrics"]
    if job["kind"] == "train" and job["status"] != "failed" and metrics != list(range(1, len(metrics) + 1)):
        problems.append(f"{name}: metrics steps {metrics}")
    if job["kind"] == "train" and job["status"] == "succeeded" and len(metrics) != job["config"]["max_steps"]:
        problems.append(f"{name}: {len(metrics)} steps shown of {job['config']['max_steps']}")
    return problems


def _output_violations(name: str, job: dict, artifacts: list[dict]) -> list[str]:
    live = [e for e in job["events"] if not e["superseded"] and e["kind"] == "artifact"]
    problems = []
    if sorted(e["data"]["artifact_id"] for e in live) != sorted(a["id"] for a in artifacts):
        problems.append(f"{name}: artifact events {[e['data']['artifact_id'] for e in live]} but rows "
                        f"{[a['id'] for a in artifacts]}")
    expected = 1 if job["status"] == "succeeded" and job["kind"] in ("train", "merge", "quantize") else 0
    if len(artifacts) != expected:
        problems.append(f"{name}: {len(artifacts)} artifacts, expected {expected}")
    for artifact in artifacts:
        if not artifact["files"]:
            problems.append(f"{name}: artifact {artifact['id']} has no files at {artifact['path']}")
    return problems


def violations(snapshot: dict) -> list[str]:
    """Everything the studio holds that a crash should not have left behind."""
    jobs = {job["id"]: job for job in snapshot["jobs"]}
    artifacts: dict[int, list] = {}
    for artifact in snapshot["artifacts"]:
        artifacts.setdefault(artifact["job"], []).append(artifact)
    notices = Counter(snapshot["notifications"])
    problems = []
    for job in jobs.values():
        name = f"job {job['id']} ({job['kind']})"
        problems += _status_violations(name, job)
        problems += _step_violations(name, job)
        problems += _output_violations(name, job, artifacts.get(job["id"], []))
        wanted = 1 if job["kind"] in NOTIFYING_KINDS and job["attempts"] and job["owner"] else 0
        if notices[job["id"]] != wanted:
            problems.append(f"{name}: owner notified {notices[job['id']]} times, expected {wanted}")
    for directory, leftovers in snapshot["job_dirs"].items():
        if not directory.isdigit() or int(directory) not in jobs:
            problems.append(f"media/jobs/{directory}: no job row")
        elif leftovers:
            problems.append(f"media/jobs/{directory}: work-in-progress files of a finished job: {leftovers}")
    for artifact in snapshot["artifacts"]:
        if artifact["job"] not in jobs or jobs[artifact["job"]]["status"] != "succeeded":
            problems.append(f"artifact {artifact['id']}: its job {artifact['job']} did not succeed")
    stored = {name for dataset in snapshot["datasets"] for name in dataset["files"]}
    problems += [f"{name}: file without a dataset row" for name in snapshot["dataset_files"] if name not in stored]
    problems += [f"dataset {d['id']}: files missing: {d['missing']}" for d in snapshot["datasets"] if d["missing"]]
    made = {pk for operation in snapshot["operations"] for pk in operation["results"]}
    problems += [f"dataset {d['id']} ({d['operation']}): made by no operation" for d in snapshot["datasets"]
                 if d["operation"] != "upload" and d["id"] not in made]
    for operation in snapshot["operations"]:
        if jobs[operation["job"]]["status"] == "succeeded" and not operation["results"]:
            problems.append(f"operation {operation['id']}: succeeded without a version")
    for analysis in snapshot["analyses"]:
        if jobs[analysis["job"]]["status"] == "succeeded" and not analysis["has_result"]:
            problems.append(f"analysis {analysis['id']}: succeeded without a result")
    problems += [f"worker {w['name']}: still holds job {w['current_job']}" for w in snapshot["workers"]
                 if w["current_job"] is not None]
    return problems


def follower_violations(received: list[dict], job: dict) -> list[str]:
    """The followed job's stream, against what is stored: every seq at most
    once and in order; every event readers show received, as stored; a seq
    received but no longer shown only where it was superseded later."""
    stored = {e["seq"]: e for e in job["events"]}
    seqs = [e["seq"] for e in received]
    problems = []
    if seqs != sorted(set(seqs)):
        problems.append(f"stream out of order or repeated: {seqs}")
    missing = sorted(seq for seq, e in stored.items() if not e["superseded"] and seq not in set(seqs))
    if missing:
        problems.append(f"stream never sent seqs {missing}")
    for event in received:
        kept = stored.get(event["seq"])
        if kept is None or (kept["kind"], kept["data"]) != (event["kind"], event["data"]):
            problems.append(f"stream sent seq {event['seq']} unlike the stored one: {event} vs {kept}")
    return problems
