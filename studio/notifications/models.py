"""In-app notices to a user: a job of theirs succeeded, failed or was cancelled."""

from django.conf import settings
from django.db import models


class Notification(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, null=True, related_name="notifications")
    level = models.CharField(max_length=10, default="info", help_text="info, success or error")
    message = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "read_at"])]

    def __str__(self):
        return self.message
