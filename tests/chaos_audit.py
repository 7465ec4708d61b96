"""What a studio holds after a chaos run, read inside its own Django process
(``manage.py shell``) and printed as one JSON document for the test to judge
(tests/chaos.py: ``violations``): every job with its stored events, the
artifacts, dataset versions and dataset work, notices, worker rows, and the
files under MEDIA_ROOT. It only reads. Rows deleted but not yet purged count
(the ``everything`` managers): their files are still there."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings

from studio.artifacts.models import Artifact
from studio.datasets.models import Dataset, DatasetAnalysis, DatasetOperation
from studio.jobs.models import Job, JobEvent
from studio.notifications.models import Notification
from studio.workers.models import WorkerNode

# What a run leaves only while it works: a finished job keeps none of these.
WORK_IN_PROGRESS = ("*.partial", "merge-work", "*.merged-source")
TOKEN_CACHE = ".token-cache"  # beside the job directories, shared by every run (tuning/data/cache.py)


def _media(relative: str) -> Path:
    return Path(settings.MEDIA_ROOT) / relative


def _jobs() -> list[dict]:
    events: dict[int, list] = {}
    for job_id, seq, kind, data, superseded in JobEvent.objects.order_by("job_id", "seq").values_list(
            "job_id", "seq", "kind", "data", "superseded"):
        events.setdefault(job_id, []).append({"seq": seq, "kind": kind, "data": data, "superseded": superseded})
    return [{"id": job.pk, "kind": job.kind, "status": job.status, "attempts": job.attempts,
             "last_seq": job.last_seq, "finished": job.finished_at is not None, "owner": job.owner_id,
             "depends_on": job.depends_on_id, "config": job.config, "events": events.get(job.pk, [])}
            for job in Job.everything.order_by("pk")]


def _job_dirs() -> dict[str, list[str]]:
    """Each directory under MEDIA_ROOT/jobs, with the work-in-progress leftovers inside it."""
    root = _media("jobs")
    found = {}
    for directory in sorted(root.iterdir()) if root.exists() else []:
        if directory.name == TOKEN_CACHE:
            continue
        found[directory.name] = sorted(str(p.relative_to(root)) for pattern in WORK_IN_PROGRESS
                                       for p in directory.rglob(pattern))
    return found


def _datasets() -> list[dict]:
    rows = []
    for dataset in Dataset.everything.order_by("pk"):
        stored = {dataset.file.name} | {e["stored"] for e in dataset.source_files if e.get("stored")}
        rows.append({"id": dataset.pk, "operation": dataset.operation, "files": sorted(stored),
                     "missing": sorted(name for name in stored if not _media(name).is_file())})
    return rows


def _dataset_files() -> list[str]:
    root = _media("datasets")
    return sorted(str(p.relative_to(_media(""))) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def snapshot() -> dict:
    return {
        "jobs": _jobs(),
        "job_dirs": _job_dirs(),
        "artifacts": [{"id": a.pk, "job": a.job_id, "path": a.path,
                       "files": sum(1 for p in Path(a.path).rglob("*") if p.is_file()) if Path(a.path).is_dir() else 0}
                      for a in Artifact.everything.order_by("pk")],
        "datasets": _datasets(),
        "dataset_files": _dataset_files(),
        "operations": [{"id": o.pk, "job": o.job_id, "results": sorted(o.results.values_list("pk", flat=True))}
                       for o in DatasetOperation.objects.order_by("pk")],
        "analyses": [{"id": a.pk, "job": a.job_id, "has_result": bool(a.stats or a.findings or a.notice)}
                     for a in DatasetAnalysis.objects.order_by("pk")],
        "notifications": list(Notification.objects.exclude(job=None).values_list("job_id", flat=True)),
        "workers": [{"name": w.name, "current_job": w.current_job_id, "stopped": w.stopped_at is not None}
                    for w in WorkerNode.objects.order_by("name")],
    }


def main() -> None:
    print("CHAOS-SNAPSHOT " + json.dumps(snapshot()))
