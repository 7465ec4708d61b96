"""Deleting, restoring and purging what teams store.

A delete is soft: the rows it removes (datasets and their versions, jobs,
artifacts, base models) point at one ``Deletion`` and vanish from every page,
list and API at once, because their default manager (``LiveManager``) leaves
them out. Their files stay until the retention window
(``settings.DELETED_RETENTION_HOURS``) has passed; then a worker's purge
(``studio.storage.services.storage_purge_due``) removes the files and the
rows. Until then the whole deletion can be restored in one click.
"""

from django.conf import settings
from django.db import models


class LiveManager(models.Manager):
    """The default manager of deletable models: only rows not deleted.
    ``everything`` (a plain manager beside it) reaches the deleted ones too;
    foreign keys read through the base manager, so a job still names the
    dataset it trained on after that dataset is deleted."""

    def get_queryset(self):
        return super().get_queryset().filter(deletion__isnull=True)


class Deletion(models.Model):
    """One delete a user asked for: the thing they chose and everything
    removed with it (its own parts, and the chain that depended on it)."""

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="deletions", null=True,
                             blank=True, help_text="Empty for base models, which every team shares.")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="+")
    username = models.CharField(max_length=150, blank=True)
    label = models.CharField(max_length=300, help_text="What the user chose to delete, in words.")
    # [{"type": "datasets.dataset", "id": 3, "label": "…", "bytes": 123}, …]: the chosen one first.
    items = models.JSONField(default=list)
    bytes = models.PositiveBigIntegerField(default=0, help_text="Disk space the purge frees.")
    at = models.DateTimeField(auto_now_add=True)
    purge_after = models.DateTimeField(db_index=True)
    restored_at = models.DateTimeField(null=True, blank=True)
    # A purge claims the deletion (purge_started_at) so two workers never purge it at once;
    # a claim older than an hour is a purge that died and is taken again.
    purge_started_at = models.DateTimeField(null=True, blank=True)
    purged_at = models.DateTimeField(null=True, blank=True)
    # What the purge removes, noted before the rows go (a purge that dies after that still knows).
    paths = models.JSONField(null=True, blank=True)
    purge_blocked = models.TextField(blank=True, help_text="Why the last purge could not finish (it is retried).")

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self):
        return self.label

    @property
    def is_pending(self) -> bool:
        return self.restored_at is None and self.purged_at is None


class Deletable(models.Model):
    """What a model that can be deleted by users carries."""

    deletion = models.ForeignKey("storage.Deletion", on_delete=models.PROTECT, null=True, blank=True,
                                 related_name="+", help_text="Set while deleted, until the purge or a restore.")

    objects = LiveManager()
    everything = models.Manager()

    class Meta:
        abstract = True
