"""Outputs that outlive their job: adapters, merged models, quantized models,
each with its lineage (the artifacts it was made from, the job, the data)."""

from django.conf import settings
from django.db import models
from django.urls import reverse

from studio.storage.models import Deletable


class Artifact(Deletable):
    class Kind(models.TextChoices):
        ADAPTER = "adapter"
        MODEL = "model"

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="artifacts")
    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="artifacts")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    name = models.CharField(max_length=200)
    path = models.CharField(max_length=500, help_text="Directory under MEDIA_ROOT holding the files.")
    metadata = models.JSONField(default=dict)
    # Lineage. An adapter applies to ``base_model``; a merged or quantized
    # model derives from it. ``parents`` are the artifacts a merge or
    # quantization read; ``dataset_sha256`` what the training read.
    base_model = models.ForeignKey("catalog.BaseModel", on_delete=models.PROTECT, null=True, blank=True,
                                   related_name="artifacts")
    parents = models.ManyToManyField("self", symmetrical=False, blank=True, related_name="children")
    dataset_sha256 = models.CharField(max_length=64, blank=True)
    format = models.CharField(max_length=20, default="safetensors",
                              help_text="safetensors, gguf, torchao, bitsandbytes …")
    size_bytes = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return self.name

    def get_absolute_url(self):
        return reverse("artifact-detail", args=[self.pk])

    @property
    def is_adapter(self) -> bool:
        return self.kind == self.Kind.ADAPTER


class Publication(models.Model):
    """A commit a publish job made to a hub repo: where and when an artifact
    was published, and which commit holds it. A re-publish adds a row."""

    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="publications")
    job = models.OneToOneField("jobs.Job", on_delete=models.CASCADE, related_name="publication")
    endpoint = models.CharField(max_length=200, help_text="The hub: huggingface.co, a mirror or a self-hosted one.")
    repo_id = models.CharField(max_length=200)
    branch = models.CharField(max_length=100, default="main")
    private = models.BooleanField(default=False)
    commit_sha = models.CharField(max_length=64)
    commit_url = models.CharField(max_length=500)
    repo_url = models.CharField(max_length=500)
    published_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                     related_name="+")
    published_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-published_at", "-pk"]

    def __str__(self):
        return f"{self.repo_id}@{self.branch} ({self.commit_sha[:12]})"
