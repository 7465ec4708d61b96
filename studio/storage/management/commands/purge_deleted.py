"""Purge now what the workers' housekeeping would purge at its next round
(for cron jobs, or a machine whose workers are stopped)."""

from django.core.management.base import BaseCommand

from studio.storage.services import storage_purge_due, storage_sweep_orphans


class Command(BaseCommand):
    help = ("Remove the files and rows of deletions whose retention window (DELETED_RETENTION_HOURS) has passed, "
            "and files no row names (older than an hour).")

    def handle(self, *args, **options):
        purged = storage_purge_due()
        self.stdout.write(f"purged {len(purged)} deletion(s)" + (f": {purged}" if purged else ""))
        orphans = storage_sweep_orphans()
        self.stdout.write(f"removed {len(orphans)} file(s) or folder(s) no row names")
