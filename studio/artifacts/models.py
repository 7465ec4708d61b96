"""Outputs that outlive their job: adapters now; merged and quantized models later."""

from django.db import models


class Artifact(models.Model):
    class Kind(models.TextChoices):
        ADAPTER = "adapter"
        MODEL = "model"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="artifacts")
    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="artifacts")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    name = models.CharField(max_length=200)
    path = models.CharField(max_length=500, help_text="Directory under MEDIA_ROOT holding the files.")
    metadata = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.name
