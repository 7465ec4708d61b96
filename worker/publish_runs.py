"""How the worker runs ``publish`` jobs: an artifact's folder, in the layout its
loaders expect and with its card, committed to a hub repo through
huggingface_hub (tuning/hub_publish.py), with byte progress and cancel. The
publication is recorded once the commit exists; a job that fails or is
cancelled committed nothing. A lost worker's job starts again, and the large
files the hub already received are not sent twice."""

from __future__ import annotations

import time
from pathlib import Path

from django.conf import settings

from studio.accounts.secrets import SecretUnreadable, secret_value
from studio.artifacts.models import Artifact
from studio.artifacts.services_publish import publication_record
from studio.jobs.models import Job
from tuning.errors import TuningError
from tuning.events import LogEvent, ProgressEvent
from tuning.hub_card import CardFacts, redistribution_refusal
from tuning.hub_publish import PublishCancelled, publish_folder, repo_files

PROGRESS_EVERY_S = 0.5


class _Progress:
    """The phase and the bytes sent, as throttled ``progress`` events."""

    def __init__(self, sink, repo_id: str):
        self.sink, self.repo_id = sink, repo_id
        self.phase, self.started, self.last = "", time.monotonic(), 0.0

    def on_phase(self, phase: str) -> None:
        self.phase = phase
        self.sink.emit(ProgressEvent(phase=f"{phase} ({self.repo_id})", done=0, total=1, unit="steps"))

    def on_bytes(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S and done < total:
            return
        self.last, elapsed = now, now - self.started
        self.sink.emit(ProgressEvent(phase=f"Uploading to {self.repo_id}", done=done, total=total, unit="bytes",
                                     elapsed_s=round(elapsed, 2),
                                     eta_s=round(elapsed / done * (total - done), 2) if done else None))


def run_publish(job: Job, sink) -> tuple[str, str]:
    config = job.config
    artifact = Artifact.objects.filter(pk=config["artifact_id"], team_id=job.team_id).first()
    if artifact is None:
        raise TuningError("the artifact to publish was deleted")
    folder = Path(artifact.path)
    if not folder.is_dir():
        raise TuningError(f"the files of {artifact.name} are gone from the server")
    facts = CardFacts.from_dict(config["card"])
    if refusal := redistribution_refusal(facts, private=config["private"]):
        raise TuningError(refusal)
    try:
        token = secret_value(secret_id=config["secret_id"], team_id=job.team_id) if config.get("secret_id") else None
    except SecretUnreadable as exc:
        raise TuningError(str(exc)) from None
    progress = _Progress(sink, config["repo_id"])
    try:
        result = publish_folder(lambda repo_id: repo_files(folder, facts=facts, repo_id=repo_id),
                                repo_id=config["repo_id"], token=token, endpoint=settings.HF_ENDPOINT,
                                branch=config["branch"], private=config["private"],
                                commit_message=config["commit_message"], on_phase=progress.on_phase,
                                on_bytes=progress.on_bytes, cancelled=sink.should_stop)
    except PublishCancelled:
        return "cancelled", "Cancelled; nothing was committed"
    if result.unchanged:
        sink.emit(LogEvent(message=f"Already on the hub with the same content: {', '.join(result.unchanged)}"))
    publication_record(job=job, artifact=artifact, repo_id=result.repo_id, branch=result.branch,
                       commit_sha=result.commit_sha, commit_url=result.commit_url, repo_url=result.repo_url)
    if not result.uploaded:
        return "succeeded", (f"Nothing new: {result.repo_id} ({result.branch}) already holds these files, at commit "
                             f"{result.commit_sha[:12]}")
    return "succeeded", (f"Published to {result.repo_id} ({result.branch}), commit {result.commit_sha[:12]}: "
                         f"{len(result.uploaded)} files sent, {len(result.unchanged)} unchanged")
