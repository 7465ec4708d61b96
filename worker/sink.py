"""The sink a running job reports to: every event is stored and pushed live."""

from __future__ import annotations

from studio.artifacts.services import artifact_create, artifact_download_url
from studio.jobs.models import Job
from studio.jobs.selectors import job_stop_requested
from studio.jobs.services import job_progress
from tuning.events import ArtifactEvent, Event


class JobSink:
    def __init__(self, job: Job):
        self.job = job

    def emit(self, event: Event) -> None:
        data = event.to_dict()
        if isinstance(event, ArtifactEvent):
            artifact = artifact_create(job=self.job, kind=event.artifact_kind, path=event.path,
                                       metadata=event.metadata)
            data.update(artifact_id=artifact.pk, download_url=artifact_download_url(artifact))
            data.pop("path")  # a server path means nothing to a browser
        elif event.kind == "checkpoint":
            data["path"] = event.path.removeprefix(str(self.job.config.get("output_dir", ""))).lstrip("/")
        job_progress(job_id=self.job.pk, kind=event.kind, data=data)

    def should_stop(self) -> bool:
        return job_stop_requested(job_id=self.job.pk)
