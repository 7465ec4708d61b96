"""Base models users can fine-tune. Methods come from ``tuning.methods``."""

from django.conf import settings
from django.db import models

from studio.storage.models import Deletable


class BaseModel(Deletable):
    class Source(models.TextChoices):
        BUNDLED = "bundled", "Bundled with the studio"
        LOCAL = "local", "Local directory"
        HUB = "hub", "Hub id"

    name = models.CharField(max_length=200, help_text="Name shown in the UI and written in model cards.")
    source = models.CharField(max_length=10, choices=Source.choices)
    ref = models.CharField(max_length=500, help_text="Directory path or hub id passed to from_pretrained.")
    upstream_id = models.CharField(max_length=200, blank=True,
                                   help_text="Hub id this model stands for, written into model cards and adapter "
                                             "configs (a bundled copy's original).")
    # What the new-job form shows, computed on a worker (studio.catalog.services,
    # worker/estimates.py) so the web process never builds a model:
    # {"shape": {hidden_size, …}, "counts": {estimate key: {"trainable", "total"} or {"error"}},
    #  "pending": {estimate key: {"request": [method, params, task], "at": unix time}}}.
    facts = models.JSONField(default=dict, blank=True, help_text="Shape and parameter counts, computed by a worker.")
    # None: shared by every team (bundled, or added by an admin); else the team that added it
    # (a hub download, perhaps with that team's access token, or a folder) sees it alone.
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, null=True, blank=True,
                             related_name="base_models")
    added_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                 related_name="+")
    revision = models.CharField(max_length=64, blank=True, help_text="The hub commit sha downloaded.")
    # tuning.model_info.describe_model_dir: family, parameters, context length, dtype, size, template, licence.
    info = models.JSONField(default=dict, blank=True)
    gated = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        # A deleted model waiting for its purge does not block adding the same ref again.
        constraints = [models.UniqueConstraint(fields=["ref"], condition=models.Q(deletion__isnull=True),
                                               name="one_base_model_per_ref")]
        ordering = ["name"]

    def __str__(self):
        return self.name

    @property
    def origin(self) -> str:
        """Where it came from, as the Models page says it."""
        if self.source == self.Source.HUB and self.upstream_id:
            return f"{self.upstream_id}@{self.revision[:12]}" if self.revision else self.upstream_id
        return self.ref
