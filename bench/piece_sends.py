"""What sending a reply's pieces costs the worker: the old way, one
``async_to_sync(layer.send)`` per piece, against ``worker/relay.py:
PieceRelay`` (one event loop per process, the first piece alone, then
what was written meanwhile at most every FLUSH_INTERVAL_S).

    .venv/bin/python bench/piece_sends.py [--pieces 200] [--gap-ms 3] [--rounds 3]

An embedded Redis server (the launcher's) and the studio's channel layer
settings; a "model" writes ``--pieces`` pieces ``--gap-ms`` apart (3 ms: a
small model on a quiet CPU; 120 ms: the bundled model here) and a
receiver drains the channel. Per round and arm: the worker's CPU time per
piece (process CPU: what competes with generation for the cores), wall
time from the first piece to the last one received, messages sent and
Redis connections opened (the server's count). Arms alternate; medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "studio.settings")


def run_arm(arm: str, pieces: int, gap_s: float, redis_client) -> dict:
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from worker.relay import PieceRelay

    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    connections = redis_client.info("stats")["total_connections_received"]
    message = {"type": "serving.piece"}
    cpu, started = time.process_time(), time.perf_counter()
    if arm == "per piece":
        send = async_to_sync(layer.send)
        for index in range(pieces):
            send(channel, {**message, "text": f" w{index}"})
            time.sleep(gap_s)
        sent = pieces
    else:
        relay = PieceRelay(channel, lambda text: {**message, "text": text}, layer=layer)
        for index in range(pieces):
            relay.put(f" w{index}")
            time.sleep(gap_s)
        relay.close()
        sent = relay.messages
    cpu = time.process_time() - cpu

    async def receive_all() -> str:
        text = []
        for _ in range(sent):
            text.append((await layer.receive(channel))["text"])
        return "".join(text)

    text = async_to_sync(receive_all)()
    wall = time.perf_counter() - started
    assert text == "".join(f" w{index}" for index in range(pieces)), "pieces lost or out of order"
    return {"arm": arm, "cpu_ms_per_piece": cpu * 1000 / pieces, "wall_s": wall, "messages": sent,
            "connections": redis_client.info("stats")["total_connections_received"] - connections}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pieces", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from studio.launcher import start_redis, stop_all

    with tempfile.TemporaryDirectory(prefix="piece-sends-") as data_dir:
        proc, url = start_redis(Path(data_dir))
        try:
            os.environ["REDIS_URL"] = url
            import django
            import redis

            django.setup()
            client = redis.Redis.from_url(url)
            arms = ("per piece", "relay")
            for arm in arms:  # warm-up: imports, the first connection
                run_arm(arm, 5, 0.0, client)
            rows = {arm: [] for arm in arms}
            for _ in range(args.rounds):
                for arm in arms:
                    rows[arm].append(run_arm(arm, args.pieces, args.gap_ms / 1000, client))
        finally:
            stop_all([proc])
    for arm in arms:
        print(json.dumps({"arm": arm, "pieces": args.pieces, "gap_ms": args.gap_ms, **{
            key: round(statistics.median(r[key] for r in rows[arm]), 3)
            for key in ("cpu_ms_per_piece", "wall_s", "messages", "connections")}}))
    ratio = [round(old["cpu_ms_per_piece"] / new["cpu_ms_per_piece"], 2)
             for old, new in zip(rows["per piece"], rows["relay"])]
    print(json.dumps({"figure": "piece_send_cpu_old_over_relay", "gap_ms": args.gap_ms,
                      "ratio": statistics.median(ratio), "ratios": ratio,
                      "load_average": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
