"""Webhooks: where a team wants to hear about finished jobs, and what was sent."""

from django.conf import settings
from django.db import models

# The event types a webhook can subscribe to, one per finished job status.
WEBHOOK_EVENT_TYPES = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")


class WebhookEndpoint(models.Model):
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="webhook_endpoints")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True)
    url = models.URLField(max_length=500)
    # Kept in clear: the studio signs with it (HMAC needs the key itself).
    secret = models.CharField(max_length=100)
    events = models.JSONField(default=list, help_text="Event types sent to this URL (see WEBHOOK_EVENT_TYPES).")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self):
        return self.url


class WebhookDelivery(models.Model):
    """One event sent (or being sent) to one endpoint, with how it went."""

    class Status(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    job = models.ForeignKey("jobs.Job", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    event_id = models.CharField(max_length=40, unique=True, help_text="Sent in the payload; receivers dedupe on it.")
    event_type = models.CharField(max_length=50)
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    response_status = models.PositiveIntegerField(null=True, blank=True, help_text="HTTP status of the last attempt.")
    error = models.TextField(blank=True, help_text="Why the last attempt failed.")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        # One delivery per endpoint, job and event: a second call for the same
        # finished job (a retried task) does not send it twice.
        constraints = [models.UniqueConstraint(fields=["endpoint", "job", "event_type"],
                                               name="one_delivery_per_job_event")]
