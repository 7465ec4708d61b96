"""How long a client takes to get a long job's stored history over its
WebSocket: one message per event (the baseline) against lists of
EVENT_REPLAY_BATCH events (the studio's default), side by side.

    .venv/bin/python bench/ws_replay.py [--events 50000] [--rounds 3]

Builds a job with ``--events`` metrics events in a temporary SQLite
database, then drives the real consumer (studio.live.consumers) through its
ASGI interface, as the server would, and times from the client's
{"after": 0} to the last event received. Prints one JSON line per setting
and the ratio of their medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="ws-replay-")
os.environ["DJANGO_SETTINGS_MODULE"] = "studio.test_settings"  # in-memory channel layer, a file database

import django  # noqa: E402

django.setup()

from asgiref.testing import ApplicationCommunicator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

BATCHED = 500


def make_job(events: int):
    from studio.accounts.services import default_team, user_create
    from studio.jobs.models import Job, JobEvent

    call_command("migrate", verbosity=0)
    team = default_team()
    user = user_create(username="bench", password="bench-pass-123", team=team)
    job = Job.objects.create(team=team, owner=user, kind="train", config={}, status="succeeded", last_seq=events)
    JobEvent.objects.bulk_create(
        [JobEvent(job=job, seq=seq, kind="metrics", data={"step": seq, "loss": 1.0 / seq, "lr": 1e-4,
                                                          "tokens_per_s": 250.0})
         for seq in range(1, events + 1)], batch_size=5000)
    return user, job


async def replay(user, job, events: int) -> float:
    from studio.live.consumers import JobEventsConsumer

    scope = {"type": "websocket", "path": f"/ws/jobs/{job.pk}/", "headers": [], "subprotocols": [], "user": user,
             "url_route": {"args": (), "kwargs": {"job_id": job.pk}}}
    client = ApplicationCommunicator(JobEventsConsumer.as_asgi(), scope)
    await client.send_input({"type": "websocket.connect"})
    await client.receive_output(timeout=30)  # accept
    started = time.perf_counter()
    await client.send_input({"type": "websocket.receive", "text": json.dumps({"after": 0})})
    last = 0
    while last < events:
        message = json.loads((await client.receive_output(timeout=60))["text"])
        last = (message[-1] if isinstance(message, list) else message)["seq"]
    elapsed = time.perf_counter() - started
    await client.send_input({"type": "websocket.disconnect", "code": 1000})
    await client.wait(timeout=10)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    user, job = make_job(args.events)
    times = {1: [], BATCHED: []}
    for _ in range(args.rounds):
        for batch in times:  # alternated, so load on the machine hits both alike
            settings.EVENT_REPLAY_BATCH = batch
            times[batch].append(asyncio.run(replay(user, job, args.events)))
    for batch, seconds in times.items():
        print(json.dumps({"events": args.events, "events_per_message": batch,
                          "median_s": round(statistics.median(seconds), 3), "rounds": [round(s, 3) for s in seconds]}))
    print(json.dumps({"speed-up": round(statistics.median(times[1]) / statistics.median(times[BATCHED]), 2)}))


if __name__ == "__main__":
    main()
