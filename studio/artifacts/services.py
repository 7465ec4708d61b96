from pathlib import Path

from django.conf import settings
from django.urls import reverse

from studio.artifacts.models import Artifact


def artifact_create(*, job, kind: str, path: str, metadata: dict) -> Artifact:
    directory = Path(path).resolve()
    if not directory.is_relative_to(Path(settings.MEDIA_ROOT).resolve()):
        raise ValueError(f"artifact directory {directory} is outside MEDIA_ROOT")
    return Artifact.objects.create(team_id=job.team_id, job=job, kind=kind, path=str(directory),
                                   name=f"{job.name} ({kind})"[:200], metadata=metadata)


def artifact_download_url(artifact: Artifact) -> str:
    return reverse("artifact-download", args=[artifact.pk])
