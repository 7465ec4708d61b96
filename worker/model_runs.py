"""How the worker runs ``model_add`` jobs: a model from the hub (checked,
then downloaded file by file with byte progress) or from a folder on the
server (checked). The model is registered last, so a job that fails or is
cancelled leaves nothing half-registered; a failed or cancelled download
removes its files (a lost worker's job starts again and the library resumes
the files it finds)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from django.conf import settings

from studio.accounts.secrets import SecretUnreadable, secret_value
from studio.catalog.models import BaseModel
from studio.catalog.services import base_model_add, folder_refusal
from studio.jobs.models import Job
from tuning.errors import TuningError
from tuning.events import LogEvent, ProgressEvent
from tuning.hub import DownloadCancelled, hub_download, hub_plan
from tuning.model_info import check_architecture, describe_model_dir

PROGRESS_EVERY_S = 0.5


def models_dir() -> Path:
    return Path(settings.MEDIA_ROOT) / "models"


def run_model_add(job: Job, sink) -> tuple[str, str]:
    if job.config.get("source") == "folder":
        return _add_folder(job, sink)
    return _add_from_hub(job, sink)


def _describe(directory: Path) -> dict:
    config = json.loads((directory / "config.json").read_text())
    check_architecture(config, trust_remote_code=settings.TRUST_REMOTE_CODE)
    if not any(directory.glob("*.safetensors")):
        raise TuningError(f"{directory} has no .safetensors weights; the studio loads safetensors only")
    return describe_model_dir(directory)


def _add_folder(job: Job, sink) -> tuple[str, str]:
    path = job.config["path"]
    if refusal := folder_refusal(path):  # again: the folder may have changed since it was asked for
        raise TuningError(refusal)
    sink.emit(ProgressEvent(phase="Reading the model's files", done=0, total=1, unit="steps"))
    info = _describe(Path(path))
    model = base_model_add(job=job, name=Path(path).name, source=BaseModel.Source.LOCAL, ref=path, info=info)
    return "succeeded", f"Added {model.name} ({info['family']}, {info['parameters'] / 1e6:.0f}M parameters)"


class _Progress:
    """Bytes and files done, as throttled ``progress`` events."""

    def __init__(self, sink, plan):
        self.sink, self.plan = sink, plan
        self.finished_bytes = self.current = self.files = 0
        self.started, self.last = time.monotonic(), 0.0

    def on_bytes(self, n: int) -> None:
        self.current += n
        self.emit()

    def on_file(self, name: str) -> None:
        self.finished_bytes += self.plan.files[name]
        self.current, self.files = 0, self.files + 1
        self.emit(force=self.files == len(self.plan.files))

    def emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        done, total = min(self.finished_bytes + self.current, self.plan.total_bytes), self.plan.total_bytes
        elapsed = now - self.started
        self.sink.emit(ProgressEvent(
            phase=f"Downloading {self.plan.repo_id}: {self.files} of {len(self.plan.files)} files", done=done,
            total=total, unit="bytes", elapsed_s=round(elapsed, 2),
            eta_s=round(elapsed / done * (total - done), 2) if done else None))


def _add_from_hub(job: Job, sink) -> tuple[str, str]:
    config = job.config
    repo_id = config["repo_id"]
    try:
        token = secret_value(secret_id=config["secret_id"], team_id=job.team_id) if config.get("secret_id") else None
    except SecretUnreadable as exc:
        raise TuningError(str(exc)) from None
    staging = models_dir() / "downloads" / f"job-{job.pk}"
    # A worker killed mid-file leaves that file's partial copy under a name no later try reuses
    # (huggingface_hub starts such a file again); the files it finished are kept and not fetched again.
    for partial in staging.rglob("*.incomplete"):
        partial.unlink()
    try:
        sink.emit(ProgressEvent(phase=f"Checking {repo_id} on the hub", done=0, total=1, unit="steps"))
        plan = hub_plan(repo_id, revision=config["revision"], token=token, endpoint=settings.HF_ENDPOINT,
                        target_dir=staging, allow_pickle=config.get("allow_pickle", False),
                        trust_remote_code=settings.TRUST_REMOTE_CODE)
        final = models_dir() / repo_id.replace("/", "--") / plan.sha
        if existing := BaseModel.objects.filter(ref=str(final)).first():
            raise TuningError(f"{repo_id}@{plan.sha[:12]} is already a base model ({existing.name})")
        sink.emit(LogEvent(message=f"{repo_id}@{plan.sha[:12]}: {len(plan.files)} files, "
                                   f"{plan.total_bytes / 2**20:.1f} MiB"))
        progress = _Progress(sink, plan)
        hub_download(plan, target_dir=staging, token=token, endpoint=settings.HF_ENDPOINT,
                     on_bytes=progress.on_bytes, on_file=progress.on_file, cancelled=sink.should_stop)
        info = _describe(staging)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(final, ignore_errors=True)  # an earlier job's leftovers of the same commit
        staging.rename(final)
    except DownloadCancelled:
        shutil.rmtree(staging, ignore_errors=True)
        return "cancelled", "Cancelled; the partial download was removed"
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    model = base_model_add(job=job, name=repo_id, source=BaseModel.Source.HUB, ref=str(final), info=info,
                           upstream_id=repo_id, revision=plan.sha, gated=plan.gated)
    return "succeeded", (f"Added {model.origin} ({info['family']}, {info['parameters'] / 1e6:.0f}M parameters, "
                         f"{info['size_bytes'] / 2**20:.0f} MiB)")
