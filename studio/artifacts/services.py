from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.urls import reverse

from studio.artifacts.models import Artifact
from studio.storage.files import directory_size


def artifact_create(*, job, kind: str, path: str, metadata: dict) -> Artifact:
    """Record what a job made, with its lineage: the job's base model, the
    artifacts it read (``job.input_artifact_ids``) and the data it trained on."""
    directory = Path(path).resolve()
    if not directory.is_relative_to(Path(settings.MEDIA_ROOT).resolve()):
        raise ValueError(f"artifact directory {directory} is outside MEDIA_ROOT")
    parents = list(Artifact.objects.filter(team_id=job.team_id, pk__in=job.input_artifact_ids))
    dataset_sha256 = job.config.get("dataset_sha256", "")
    if not dataset_sha256 and len(parents) == 1:
        dataset_sha256 = parents[0].dataset_sha256  # a merged or quantized adapter still stems from that data
    what = metadata.get("scheme") or metadata.get("method") or kind
    with transaction.atomic():
        # A job taken back from a lost worker after it recorded its output makes it again, in the same
        # directory: the row is updated, so the job keeps one artifact and its id stays valid.
        artifact, _ = Artifact.objects.update_or_create(job=job, path=str(directory), defaults=dict(
            team_id=job.team_id, kind=kind, name=f"{job.name} ({what})"[:200], metadata=metadata,
            base_model_id=job.base_model_id, dataset_sha256=dataset_sha256,
            format=metadata.get("format", "safetensors")[:20], size_bytes=directory_size(directory)))
        artifact.parents.set(parents)
    return artifact


def artifact_download_url(artifact: Artifact) -> str:
    return reverse("artifact-download", args=[artifact.pk])
