"""Uploaded datasets. A row exists only for a file that passed every check."""

from django.conf import settings
from django.db import models
from django.urls import reverse


def dataset_upload_path(instance, filename):
    return f"datasets/{instance.team_id}/{instance.sha256[:16]}/{filename}"


class Dataset(models.Model):
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="datasets")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True)
    name = models.CharField(max_length=200)
    file = models.FileField(upload_to=dataset_upload_path, max_length=500)
    format = models.CharField(max_length=10)
    row_count = models.PositiveIntegerField()
    columns = models.JSONField(default=list)
    schema = models.CharField(max_length=20, default="alpaca",
                              help_text="alpaca, chat, sharegpt, text or text+label (tuning.data).")
    tasks = models.JSONField(default=list, help_text="Training tasks this data suits: sft, pretrain, classify.")
    labels = models.JSONField(default=list, help_text="Class names, for classification data.")
    preview = models.JSONField(default=list, help_text="The first rows, as shown on the dataset page.")
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("dataset-detail", args=[self.pk])
