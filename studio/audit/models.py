"""Who did what, in which team, and when: one row per action worth answering
for later (a job started or deleted, a download, a token made)."""

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class AuditEntry(models.Model):
    class Action(models.TextChoices):
        JOB_STARTED = "job.started", "Job started"
        JOB_CANCELLED = "job.cancelled", "Job cancelled"
        JOB_RESUMED = "job.resumed", "Job resumed"
        JOB_DELETED = "job.deleted", "Job deleted"
        JOB_REPRIORITISED = "job.reprioritised", "Job moved in the queue"
        DATASET_UPLOADED = "dataset.uploaded", "Dataset uploaded"
        DATASET_CHANGED = "dataset.changed", "Dataset changed"
        DATASET_DELETED = "dataset.deleted", "Dataset deleted"
        ARTIFACT_DOWNLOADED = "artifact.downloaded", "Artifact downloaded"
        ARTIFACT_DELETED = "artifact.deleted", "Artifact deleted"
        ARTIFACT_PUBLISHED = "artifact.published", "Artifact published to a hub"
        TOKEN_CREATED = "token.created", "API token created"
        TOKEN_REVOKED = "token.revoked", "API token revoked"
        MEMBER_ADDED = "member.added", "Member added"
        MEMBER_REMOVED = "member.removed", "Member removed"
        MEMBER_ROLE_CHANGED = "member.role_changed", "Member role changed"
        MEMBER_LEFT = "member.left", "Member left"
        INVITATION_CREATED = "invitation.created", "Invitation made"
        INVITATION_REVOKED = "invitation.revoked", "Invitation revoked"
        QUOTA_CHANGED = "quota.changed", "Team quota changed"
        MODEL_DELETED = "model.deleted", "Base model deleted"
        STORAGE_RESTORED = "storage.restored", "Deleted things restored"
        STORAGE_PURGED = "storage.purged", "Deleted things purged"
        TWO_FACTOR_ENABLED = "2fa.enabled", "Two-factor turned on"
        TWO_FACTOR_DISABLED = "2fa.disabled", "Two-factor turned off"
        RECOVERY_CODE_USED = "2fa.recovery_code_used", "Recovery code used"
        RECOVERY_CODES_RENEWED = "2fa.recovery_codes_renewed", "Recovery codes renewed"
        SIGNIN_REFUSED = "signin.refused", "Sign-in refused"
        ACCOUNT_CREATED = "account.created", "Account created at sign-in"

    # The log goes with its team (a deleted team has no one left to read it).
    # Empty for what concerns every team (a base model deleted by a staff user).
    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="audit_entries", null=True,
                             blank=True)
    # SET_NULL keeps the entry when the account goes; ``username`` keeps the name.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                             related_name="audit_entries")
    username = models.CharField(max_length=150, blank=True, help_text="The user's name when it happened.")
    action = models.CharField(max_length=40, choices=Action.choices)
    # The target is named, not linked: it may be deleted (job.deleted) and the
    # entry must still say what it was. target_type is the model label, e.g. "jobs.job".
    target_type = models.CharField(max_length=100, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    target_label = models.CharField(max_length=200, blank=True)
    detail = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    ip = models.GenericIPAddressField(null=True, blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at", "-pk"]
        indexes = [models.Index(fields=["team", "-at"], name="audit_team_newest")]
        verbose_name_plural = "audit entries"

    def __str__(self):
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.username or '?'} {self.action} {self.target_label}"
