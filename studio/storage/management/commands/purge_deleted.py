"""Purge now what the workers' housekeeping would purge at its next round
(for cron jobs, or a machine whose workers are stopped)."""

from django.core.management.base import BaseCommand

from studio.storage.services import storage_purge_due


class Command(BaseCommand):
    help = "Remove the files and rows of deletions whose retention window (DELETED_RETENTION_HOURS) has passed."

    def handle(self, *args, **options):
        purged = storage_purge_due()
        self.stdout.write(f"purged {len(purged)} deletion(s)" + (f": {purged}" if purged else ""))
