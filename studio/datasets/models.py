"""Datasets and their versions, and the results of work done on them by workers.

Every version is a ``Dataset`` row: an upload is version 1 of its family,
and each diet step (dedupe, filter, subsample, split, merge, column
mapping) writes a new row whose ``parents`` are the versions it read. Jobs
point at one row, so a job always trains on exactly one version (its
``sha256`` is recorded in the job config and the model card).
"""

from django.conf import settings
from django.db import models
from django.urls import reverse

from studio.storage.models import Deletable


def dataset_upload_path(instance, filename):
    return f"datasets/{instance.team_id}/{instance.sha256[:16]}/{filename}"


class Dataset(Deletable):
    class Confidence(models.TextChoices):
        SURE = "sure"
        UNSURE = "unsure"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="datasets")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True)
    name = models.CharField(max_length=200)
    file = models.FileField(upload_to=dataset_upload_path, max_length=500)
    format = models.CharField(max_length=10)
    row_count = models.PositiveIntegerField()
    columns = models.JSONField(default=list)
    schema = models.CharField(max_length=20, default="alpaca",
                              help_text="alpaca, chat, sharegpt, text or text+label (tuning.data).")
    tasks = models.JSONField(default=list, help_text="Training tasks this data suits: sft, pretrain, classify. "
                                                     "Empty until the schema is confirmed.")
    labels = models.JSONField(default=list, help_text="Class names, for classification data.")
    preview = models.JSONField(default=list, help_text="The first rows, as shown on the dataset page.")
    sha256 = models.CharField(max_length=64, help_text="sha256 of the stored data file (what a job records).")
    size_bytes = models.PositiveBigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    # What the upload check detected, shown for confirmation.
    encoding = models.CharField(max_length=40, blank=True)
    detected_schema = models.CharField(max_length=40, blank=True, help_text="The schema as the detector named it.")
    schema_confidence = models.CharField(max_length=10, choices=Confidence.choices, default=Confidence.SURE)
    column_mapping = models.JSONField(default=dict, blank=True,
                                      help_text="Canonical field → source column, as detected or confirmed.")
    confirmed = models.BooleanField(default=True, help_text="False while an unsure schema awaits the user's mapping; "
                                                            "such a version cannot be trained on.")
    problem = models.TextField(blank=True, help_text="The first row training would refuse (the strict check "
                                                     "stops there; lint lists every one). Not trainable until a "
                                                     "version without such rows is made.")
    source_files = models.JSONField(default=list, blank=True,
                                    help_text="The uploaded files ({name, size_bytes, format, encoding}).")

    # Lineage: the upload is the root of its family; derived versions name it.
    root = models.ForeignKey("self", on_delete=models.CASCADE, null=True, blank=True, related_name="descendants")
    parents = models.ManyToManyField("self", symmetrical=False, blank=True, related_name="children")
    version = models.PositiveIntegerField(default=1, help_text="Number within the family, 1 for the upload.")
    operation = models.CharField(max_length=40, default="upload")
    parameters = models.JSONField(default=dict, blank=True)
    report = models.JSONField(default=dict, blank=True, help_text="What the operation changed and why.")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.name if self.version == 1 else f"{self.name} (v{self.version}, {self.operation})"

    def get_absolute_url(self):
        return reverse("dataset-detail", args=[self.pk])

    @property
    def family_root_id(self) -> int:
        return self.root_id or self.pk


class DatasetWork(models.Model):
    """What analyses and operations share: the Job that runs them on a worker.
    Status, progress and failure are the job's (one job system for every kind
    of work); this row holds the request and, once done, the result."""

    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="%(class)s")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    @property
    def status(self) -> str:
        return self.job.status

    @property
    def finished(self) -> bool:
        return self.job.is_finished

    @property
    def message(self) -> str:
        return self.job.failure_message


class DatasetAnalysis(DatasetWork):
    """Preview through the chat template, token statistics and lint
    findings of one version for one base model and max length."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="analyses")
    base_model = models.ForeignKey("catalog.BaseModel", on_delete=models.CASCADE, related_name="+")
    max_length = models.PositiveIntegerField()
    loss_on_prompt = models.BooleanField(default=False)
    chat_template = models.CharField(max_length=20, default="auto",
                                     help_text="auto (the model's own) or a name of tuning.data.chat_templates.")
    template_in_effect = models.CharField(max_length=200, blank=True, help_text="What rendered the preview, in words.")
    preview = models.JSONField(default=list, help_text="tuning.data.preview.render_preview rows.")
    stats = models.JSONField(default=dict, help_text="Token statistics (tuning.data.stats).")
    histogram_svg = models.TextField(blank=True)
    findings = models.JSONField(default=list, help_text="Lint findings (tuning.data.lint), each with its rows.")
    notice = models.TextField(blank=True, help_text="What a finished analysis could not show, and why.")
    # Kept beside the findings so that a list of versions (the new-job form) reads one number per version
    # rather than every finding's row list.
    blocking_rows = models.PositiveIntegerField(
        default=0, help_text="Rows the blocking findings list, each counted once (a row can have two problems).")

    class Meta(DatasetWork.Meta):
        verbose_name_plural = "dataset analyses"


class DatasetOperation(DatasetWork):
    """One diet step (or column mapping, or dropping flagged rows) run on a
    worker; ``results`` are the versions it made (two for a split)."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="operations")
    others = models.ManyToManyField(Dataset, blank=True, related_name="+", help_text="Further inputs of a merge.")
    operation = models.CharField(max_length=40)
    parameters = models.JSONField(default=dict, blank=True)
    base_model = models.ForeignKey("catalog.BaseModel", on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+", help_text="Whose tokenizer counts tokens, where one is needed.")
    results = models.ManyToManyField(Dataset, blank=True, related_name="made_by")
