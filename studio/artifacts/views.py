from pathlib import Path

from django.http import Http404, StreamingHttpResponse
from django.utils.text import slugify

from studio.artifacts.selectors import artifact_get_for_user
from studio.artifacts.zipstream import zip_directory


def artifact_download(request, artifact_id: int):
    artifact = artifact_get_for_user(user=request.user, artifact_id=artifact_id)
    directory = Path(artifact.path)
    if not directory.is_dir():
        raise Http404("The files of this artifact are gone from the server.")
    stem = f"{slugify(artifact.job.name) or 'job'}-{artifact.job_id}-{artifact.kind}"
    response = StreamingHttpResponse(zip_directory(directory, prefix=stem), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{stem}.zip"'
    return response
