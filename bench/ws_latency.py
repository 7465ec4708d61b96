"""Latency from an event stored by the worker to its arrival at 1, 20 and
100 WebSocket clients watching one running job.

    .venv/bin/python bench/ws_latency.py [--seconds 10] [--clients 1,20,100]

Starts a real studio on 127.0.0.1 (embedded Redis, uvicorn, one Celery
worker; tests/stack.py) with the tiny test model, starts one long training
job, and for each client count connects that many clients at once. Each
says it has every event so far ({"after": last seq}), so only live events
are timed. Latency = arrival at the client (wall clock, this process) minus
the event's ``created_at``, read from the SQLite file afterwards; the bench,
the worker and the server share the machine and its clock. Prints one JSON
line per client count (p50, p95 and max in ms), then the target check:
p95 <= 100 ms at 20 clients. The clients run in this one process, so at
100 clients part of the figure is the bench's own queueing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import websockets

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from studio.launcher import stop_all  # noqa: E402
from tests.stack import start_stack  # noqa: E402
from tests.tiny_model import tiny_model_dir  # noqa: E402

TARGET_CLIENTS, TARGET_P95_MS = 20, 100.0
WARM_UP_S = 1.0  # arrivals in the first second after connecting are not counted
WARM_UP_STEPS = 5  # the first training steps are slow and irregular
ROWS = "".join(json.dumps({"instruction": f"Say {word}.", "output": f"{word.capitalize()}!"}) + "\n"
               for word in ["hello", "yes", "blue", "green", "one", "two", "red", "tea"])


def db_query(stack, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(f"file:{stack.data_dir / 'studio.sqlite3'}?mode=ro", uri=True, timeout=30) as db:
        return db.execute(sql, args).fetchall()


def last_seq(stack, job_id: int) -> int:
    return db_query(stack, "SELECT last_seq FROM jobs_job WHERE id = ?", job_id)[0][0]


async def watch(url: str, headers: dict, after: int, window: dict, arrivals: list, ready: asyncio.Event):
    """One client: connect, skip what is stored, note (seq, arrival time)
    until ``window["end"]`` (set once every client is connected)."""
    async with websockets.connect(url, additional_headers=headers, open_timeout=30, max_queue=None) as socket:
        await socket.send(json.dumps({"after": after}))
        ready.set()
        while (left := window["end"] - time.time()) > 0:
            try:
                message = await asyncio.wait_for(socket.recv(), min(left, 1.0))
            except asyncio.TimeoutError:
                continue
            arrived, decoded = time.time(), json.loads(message)
            for event in decoded if isinstance(decoded, list) else [decoded]:  # a catch-up list, or one event
                arrivals.append((event["seq"], arrived))


async def watch_all(stack, session, job_id: int, clients: int, seconds: float) -> list[tuple[int, float]]:
    url = stack.ws_url(job_id)
    headers = {"Cookie": stack.cookie_header(session), "Origin": stack.base_url}
    arrivals: list[tuple[int, float]] = []
    window = {"end": float("inf")}
    readies = [asyncio.Event() for _ in range(clients)]
    tasks = [asyncio.create_task(watch(url, headers, last_seq(stack, job_id), window, arrivals, ready))
             for ready in readies]
    await asyncio.wait_for(asyncio.gather(*(ready.wait() for ready in readies)), 60)
    counted_from = time.time() + WARM_UP_S
    window["end"] = counted_from + seconds
    await asyncio.gather(*tasks)
    return [(seq, at) for seq, at in arrivals if at >= counted_from]


def created_at(stack, job_id: int, seqs: set[int]) -> dict[int, float]:
    rows = db_query(stack, "SELECT seq, created_at FROM jobs_jobevent WHERE job_id = ? AND seq BETWEEN ? AND ?",
                    job_id, min(seqs), max(seqs))
    # Django stores UTC without an offset: "2025-01-01 12:00:00.123456"
    return {seq: datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() for seq, text in rows}


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1)))]


def measure(stack, session, job_id: int, clients: int, seconds: float) -> dict:
    arrivals = asyncio.run(watch_all(stack, session, job_id, clients, seconds))
    if not arrivals:
        return {"clients": clients, "error": "no event arrived; is the job running?"}
    stored = created_at(stack, job_id, {seq for seq, _ in arrivals})
    latencies = sorted((at - stored[seq]) * 1000 for seq, at in arrivals)
    return {"clients": clients, "events": len({seq for seq, _ in arrivals}), "samples": len(latencies),
            "p50_ms": round(percentile(latencies, 50), 1), "p95_ms": round(percentile(latencies, 95), 1),
            "max_ms": round(latencies[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="how long each client count is measured")
    parser.add_argument("--clients", default="1,20,100", help="client counts, comma-separated")
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="ws-latency-") as data_dir:
        stack = start_stack(Path(data_dir), tiny_model_dir())
        try:
            session = stack.login()
            dataset_id = stack.upload(session, "words.jsonl", ROWS)
            job_id = stack.start_job(session, dataset_id, max_steps=10_000_000, save_every=10_000_000)
            deadline = time.monotonic() + 120
            while db_query(stack, "SELECT COUNT(*) FROM jobs_jobevent WHERE job_id = ? AND kind = 'metrics'",
                           job_id)[0][0] < WARM_UP_STEPS:
                assert time.monotonic() < deadline, "the job did not start training within 2 minutes"
                time.sleep(0.5)
            results = []
            for clients in counts:
                results.append(measure(stack, session, job_id, clients, args.seconds))
                print(json.dumps(results[-1]), flush=True)
            stack.post(session, f"/jobs/{job_id}/cancel/")
        finally:
            stop_all(stack.procs)
    at_target = next((r for r in results if r["clients"] == TARGET_CLIENTS and "p95_ms" in r), None)
    if at_target:
        print(json.dumps({"target": f"p95 <= {TARGET_P95_MS:g} ms at {TARGET_CLIENTS} clients",
                          "p95_ms": at_target["p95_ms"], "met": at_target["p95_ms"] <= TARGET_P95_MS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
