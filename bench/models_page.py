"""Time to answer the Models page with many base models registered, against
the 300 ms goal, with the job list answered side by side as the yardstick.

    .venv/bin/python bench/models_page.py [--models 50] [--requests 20]

Sets up a fresh SQLite database under /tmp (migrations, one user), registers
``--models`` base models with their facts plus a job and an artifact on each,
then asks for /models/ and / (the job list) in turn through Django's test
client (the whole view, templates and queries; no network) and prints the
median milliseconds of each and the Models page's ratio to the goal (at most
1.0 passes). Prints one JSON line.
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
GOAL_MS = 300


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(prefix="bench-models-")
    os.environ.update(DATA_DIR=scratch, DJANGO_SETTINGS_MODULE="studio.settings", ALLOWED_HOSTS="testserver")
    os.environ.pop("DATABASE_URL", None)
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from studio.accounts.services import default_team, user_create
    from studio.artifacts.models import Artifact
    from studio.catalog.models import BaseModel
    from studio.jobs.models import Job

    call_command("migrate", verbosity=0)
    team = default_team()
    user = user_create(username="bench", password="bench-pass-123", team=team)
    info = {"family": "Llama", "proven": True, "parameters": 134_515_008, "context_length": 8192, "dtype": "BF16",
            "size_bytes": 269_060_552, "chat_template": True, "license": "apache-2.0"}
    for n in range(args.models):
        model = BaseModel.objects.create(name=f"org/model-{n}", source="hub", ref=f"{scratch}/models/{n}",
                                         upstream_id=f"org/model-{n}", revision="0" * 40, info=info, team=team)
        job = Job.objects.create(team=team, owner=user, kind="train", base_model=model, config={}, status="succeeded")
        Artifact.objects.create(team=team, job=job, kind="adapter", name=f"adapter {n}", path=f"{scratch}/a{n}",
                                base_model=model)
    client = Client()
    client.force_login(user)
    timings = {"/models/": [], "/": []}
    for _ in range(args.requests):
        for path in timings:
            started = time.perf_counter()
            response = client.get(path)
            timings[path].append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (path, response.status_code)
    models_ms, jobs_ms = statistics.median(timings["/models/"]), statistics.median(timings["/"])
    print(json.dumps({"figure": "models_page_ms", "models": args.models, "models_page_ms": round(models_ms, 1),
                      "job_list_ms": round(jobs_ms, 1), "ratio_to_goal": round(models_ms / GOAL_MS, 3),
                      "goal_ms": GOAL_MS}))


if __name__ == "__main__":
    main()
