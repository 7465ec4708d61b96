"""Live events of 50 running jobs fanned out to 1,000 WebSocket viewers
through the Redis channel layer: delivery latency and the web process's
memory (issue 24).

    .venv/bin/python bench/ws_fanout.py [--jobs 50] [--viewers 1000] [--rate 1] [--seconds 20]
                                        [--web-processes 1,2] [--layers pubsub,queued]

For each count of ``--web-processes``, in turn, starts a real studio on
127.0.0.1 (embedded Redis, that many uvicorn web processes behind one port,
``WEB_PROCESSES``; the workers; tests/stack.py), for each ``--layers`` in
turn (``BROADCAST_LAYER``: Redis pub/sub, or a queued copy per viewer). A publisher process (the studio's own
``job_event_record``, as a worker records a training step) keeps ``--jobs``
jobs running, renewing their heartbeats, and stores ``--rate`` metrics
events per job per second; nothing trains, so the figure is the fan-out's
own, not the cores' training load. ``--viewers`` clients, spread evenly
over the jobs, connect at once and say they have everything stored; then
each arrival over ``--seconds`` is timed. Latency = arrival (wall clock,
this process) minus the event's stored ``created_at`` (the same machine's
clock). Prints one JSON line per count: p50/p95/max ms, events and
deliveries per second, viewers that missed an event, and the web
processes' resident memory before the viewers connected and while they
watched (in all, and of each process that serves sockets). The clients run
in this one process: on a small machine part of the latency is theirs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.ws_latency import db_query, percentile, watch  # noqa: E402
from studio.launcher import stop_all  # noqa: E402
from tests.stack import ADMIN, start_stack, web_server_pids  # noqa: E402
from tests.tiny_model import tiny_model_dir  # noqa: E402

HANDSHAKES_AT_ONCE = 20

# Run inside the studio (manage.py shell) with the stack's settings: jobs that run without a worker.
PUBLISHER = """
import time
from pathlib import Path
from django.contrib.auth import get_user_model
from django.utils import timezone
from studio.accounts.models import Membership
from studio.jobs.events import job_event_record
from studio.jobs.models import Job

owner = get_user_model().objects.get(username={admin!r})
team = Membership.objects.filter(user=owner).first().team
ids = [Job.objects.create(team=team, owner=owner, kind="train", name=f"fan-out {{n}}", config={{}},
                          status="running", device_pool="fanout", worker_name="publisher",
                          started_at=timezone.now(), heartbeat_at=timezone.now()).pk for n in range({jobs})]
Path({ids_file!r}).write_text(",".join(map(str, ids)))
stop, step, interval = Path({stop_file!r}), 0, 1 / ({rate} * len(ids))
next_at = time.monotonic()
while not stop.exists():
    step += 1
    Job.objects.filter(pk__in=ids).update(heartbeat_at=timezone.now())  # alive: not taken back as lost
    for pk in ids:
        job_event_record(job_id=pk, kind="metrics", data={{"step": step, "total_steps": 10**9, "loss": 1.0}})
        next_at += interval
        time.sleep(max(next_at - time.monotonic(), 0))
"""


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn's supervisor and its web processes)."""
    return round(sum(_rss_kib(candidate) for candidate in [pid, *_children(pid)]) / 1024, 1)


def serving_rss_mib(pid: int) -> list[float]:
    """Resident memory of each process serving sockets: ``pid`` itself, or the web processes of uvicorn's
    supervisor (``--workers``)."""
    return [round(_rss_kib(server) / 1024, 1) for server in web_server_pids(pid)]


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return 0
    return int(next(line for line in status.read_text().splitlines() if line.startswith("VmRSS:")).split()[1])


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


async def _gated(gate: asyncio.Semaphore, start, ready: asyncio.Event):
    """Start one viewer while holding the gate until its socket is open: viewers arrive a few at a time, as
    people open pages, not all in one instant (a thousand handshakes at once wait on the web process's one
    database thread longer than a handshake may take)."""
    async with gate:
        task = asyncio.create_task(start())
        opened = asyncio.create_task(ready.wait())
        await asyncio.wait([task, opened], return_when=asyncio.FIRST_COMPLETED)
    await task


async def watch_jobs(stack, session, ids: list[int], viewers: int, seconds: float) -> list[tuple]:
    headers = {"Cookie": stack.cookie_header(session), "Origin": stack.base_url}
    window = {"end": float("inf")}
    per_viewer: list[list] = [[] for _ in range(viewers)]
    readies = [asyncio.Event() for _ in range(viewers)]
    gate, tasks = asyncio.Semaphore(HANDSHAKES_AT_ONCE), []
    for n in range(viewers):
        job_id = ids[n % len(ids)]
        after = db_query(stack, "SELECT last_seq FROM jobs_job WHERE id = ?", job_id)[0][0]
        start = functools.partial(watch, stack.ws_url(job_id), headers, after, window, per_viewer[n], readies[n])
        tasks.append(asyncio.create_task(_gated(gate, start, readies[n])))
    await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), 600)
    counted_from = time.time() + 2.0  # the connections' own start-up is not counted
    window["end"] = counted_from + seconds
    await asyncio.gather(*tasks)
    return [(ids[n % len(ids)], [(seq, at) for seq, at in arrivals if at >= counted_from])
            for n, arrivals in enumerate(per_viewer)]


def measure(args, processes: int, layer: str) -> dict:
    """One studio with ``processes`` web processes broadcasting through ``layer``, its viewers and publisher: the
    figures of one JSON line."""
    with tempfile.TemporaryDirectory(prefix="ws-fanout-") as data_dir:
        stack = start_stack(Path(data_dir), tiny_model_dir(), WEB_PROCESSES=str(processes),
                            BROADCAST_LAYER=layer)
        ids_file, stop_file = Path(data_dir) / "ids", Path(data_dir) / "stop"
        publisher = subprocess.Popen(
            [sys.executable, "manage.py", "shell", "-v", "0", "-c", PUBLISHER.format(
                admin=ADMIN[0], jobs=args.jobs, ids_file=str(ids_file), stop_file=str(stop_file), rate=args.rate)],
            cwd=REPO, env=stack.env)
        try:
            deadline = time.monotonic() + 120
            while not ids_file.exists():
                assert publisher.poll() is None and time.monotonic() < deadline, "the publisher did not start"
                time.sleep(0.2)
            ids = [int(pk) for pk in ids_file.read_text().split(",")]
            web_pid = stack.procs[1].pid  # redis, then the web server (tests/stack.py)
            session = stack.login()
            memory_before, each_before = rss_mib(web_pid), serving_rss_mib(web_pid)
            watched = asyncio.run(watch_jobs(stack, session, ids, args.viewers, args.seconds))
            memory_watching, each_watching = rss_mib(web_pid), serving_rss_mib(web_pid)
        finally:
            stop_file.touch()
            publisher.wait(timeout=60)
            stored = {}
            for job_id, seq, created in (db_query(stack, "SELECT job_id, seq, created_at FROM jobs_jobevent "
                                                         "WHERE kind = 'metrics'")):
                stored[(job_id, seq)] = created
            stop_all(stack.procs)

    from datetime import datetime, timezone

    def stored_at(job_id: int, seq: int) -> float:
        return datetime.fromisoformat(stored[(job_id, seq)]).replace(tzinfo=timezone.utc).timestamp()

    latencies, missed = [], 0
    for job_id, arrivals in watched:
        seqs = sorted(seq for seq, _ in arrivals)
        if seqs and seqs != list(range(seqs[0], seqs[-1] + 1)):
            missed += 1  # a gap: this viewer lost an event
        latencies += [(at - stored_at(job_id, seq)) * 1000 for seq, at in arrivals]
    latencies.sort()
    events = len({(job_id, seq) for job_id, arrivals in watched for seq, _ in arrivals})
    return {
        "figure": "ws_fanout", "jobs": args.jobs, "viewers": args.viewers, "web_processes": processes,
        "broadcast_layer": layer,
        "events_per_s": round(events / args.seconds, 1), "deliveries_per_s": round(len(latencies) / args.seconds, 1),
        "p50_ms": round(percentile(latencies, 50), 1), "p95_ms": round(percentile(latencies, 95), 1),
        "max_ms": round(latencies[-1], 1), "viewers_with_a_gap": missed,
        "web_rss_mib_before": memory_before, "web_rss_mib_watching": memory_watching,
        "rss_mib_per_web_process_before": each_before, "rss_mib_per_web_process_watching": each_watching}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1.0, help="events per job per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--web-processes", default="1", help="comma-separated counts, each measured in turn")
    parser.add_argument("--layers", default="pubsub", help="comma-separated BROADCAST_LAYER values, each in turn")
    args = parser.parse_args()
    counts = [int(count) for count in args.web_processes.split(",")]
    # a socket is a file: this process holds one per viewer, the web server (which inherits the limit) one more
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.viewers + 1024)), hard))
    for processes in counts:
        for layer in args.layers.split(","):
            print(json.dumps(measure(args, processes, layer)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
