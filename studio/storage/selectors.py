"""What a delete would remove, and how much disk each team uses.

The dependency graph a delete walks:

- a dataset version: its analyses and diet steps go with it; the versions
  made from it and the jobs that trained or evaluated on it depend on it;
- a job: its artifacts go with it; whatever depends on those artifacts, and
  unfinished jobs that wait for it or resume from its checkpoints, depend on it;
- an artifact: the artifacts made from it and the jobs that read it
  (merges, quantizations, evaluations) depend on it;
- a base model: the jobs and artifacts built on it depend on it (in any team).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from django.db import models
from django.db.models import Sum
from django.template.defaultfilters import filesizeformat

from studio.artifacts.models import Artifact
from studio.catalog.models import BaseModel
from studio.datasets.models import Dataset
from studio.jobs.models import Job, TeamQuota, job_output_dir
from studio.storage.files import directory_size
from studio.storage.models import Deletion

DATASET_WORK_KINDS = (Job.Kind.ANALYSE, Job.Kind.DIET)  # a version's own analyses and steps, not users of it
DELETABLE_MODELS = (Job, Artifact, Dataset, BaseModel)  # the order a purge removes rows in (PROTECT first)
TYPE_WORDS = {Dataset: "dataset version", Job: "job", Artifact: "artifact", BaseModel: "base model"}


def describe(obj: models.Model) -> str:
    if isinstance(obj, Job):
        return f"job #{obj.pk} “{obj}” ({obj.kind_label.lower()}, {obj.status})"
    if isinstance(obj, Dataset):
        return f"dataset “{obj.name}” v{obj.version}" + (f" ({obj.operation})" if obj.version > 1 else "")
    return f"{TYPE_WORDS[type(obj)]} “{obj}”"


def stored_names(dataset: Dataset) -> set[str]:
    """The storage names of a version's files: its data file and each upload stored beside it."""
    return {name for name in [dataset.file.name, *(entry.get("stored") for entry in dataset.source_files)] if name}


def item_bytes(obj: models.Model) -> int:
    """Disk space the object's own files take (an artifact's are inside its job's directory)."""
    if isinstance(obj, Dataset):
        return obj.size_bytes + sum(entry.get("size_bytes", 0) for entry in obj.source_files
                                    if entry.get("stored") and entry["stored"] != obj.file.name)
    if isinstance(obj, Job):
        return obj.disk_bytes if obj.is_finished else directory_size(job_output_dir(obj.pk))
    if isinstance(obj, Artifact):
        return obj.size_bytes
    return 0


def _parts(obj: models.Model) -> list[models.Model]:
    if isinstance(obj, Dataset):
        return list(Job.objects.filter(dataset=obj, kind__in=DATASET_WORK_KINDS))
    if isinstance(obj, Job):
        return list(obj.artifacts.all())
    return []


def _readers_of(artifact: Artifact) -> list[Job]:
    jobs = Job.objects.filter(team_id=artifact.team_id).exclude(input_artifact_ids=[])
    return [job for job in jobs.only("pk", "input_artifact_ids") if artifact.pk in job.input_artifact_ids]


def _dependents(obj: models.Model) -> list[models.Model]:
    if isinstance(obj, Dataset):
        return [*obj.children.all(), *Job.objects.filter(dataset=obj).exclude(kind__in=DATASET_WORK_KINDS)]
    if isinstance(obj, Job):
        directory = str(job_output_dir(obj.pk)) + "/"
        unfinished = Job.objects.filter(team_id=obj.team_id).exclude(status__in=Job.FINISHED).exclude(pk=obj.pk)
        return [job for job in unfinished
                if job.depends_on_id == obj.pk or str(job.config.get("resume_from") or "").startswith(directory)]
    if isinstance(obj, Artifact):
        readers = Job.objects.filter(pk__in=[job.pk for job in _readers_of(obj)])
        return [*obj.children.all(), *readers]
    if isinstance(obj, BaseModel):
        return [*Job.objects.filter(base_model=obj).exclude(kind__in=DATASET_WORK_KINDS),
                *Artifact.objects.filter(base_model=obj)]
    return []


def _key(obj: models.Model) -> tuple[str, int]:
    return obj._meta.label_lower, obj.pk


@dataclass
class RemovalPlan:
    """``parts`` go with the target in any case; ``dependents`` only when the
    user chooses to remove the whole chain (otherwise the delete is refused)."""

    target: models.Model
    parts: list[models.Model] = field(default_factory=list)
    dependents: list[models.Model] = field(default_factory=list)

    def removes(self, *, chain: bool) -> list[models.Model]:
        return [self.target, *self.parts, *(self.dependents if chain else [])]

    def unfinished_jobs(self, *, chain: bool) -> list[Job]:
        return [obj for obj in self.removes(chain=chain) if isinstance(obj, Job) and not obj.is_finished]


def removal_plan(target: models.Model) -> RemovalPlan:
    """Everything deleting ``target`` touches, found breadth-first (each once)."""
    plan = RemovalPlan(target=target)
    seen = {_key(target)}
    pending = deque([(target, False)])
    while pending:
        obj, in_chain = pending.popleft()
        for found, depends in [*((part, in_chain) for part in _parts(obj)), *((d, True) for d in _dependents(obj))]:
            if _key(found) in seen:
                continue
            seen.add(_key(found))
            (plan.dependents if depends else plan.parts).append(found)
            pending.append((found, depends))
    return plan


def removal_bytes(objects: list[models.Model]) -> int:
    jobs = {obj.pk for obj in objects if isinstance(obj, Job)}
    return sum(item_bytes(obj) for obj in objects if not (isinstance(obj, Artifact) and obj.job_id in jobs))


@dataclass(frozen=True)
class StorageUsage:
    datasets_bytes: int
    jobs_bytes: int
    awaiting_purge_bytes: int
    quota_bytes: int  # 0: no limit

    @property
    def used_bytes(self) -> int:
        return self.datasets_bytes + self.jobs_bytes

    @property
    def percent_of_quota(self) -> int:
        return min(100, int(100 * self.used_bytes / self.quota_bytes)) if self.quota_bytes else 0


def team_storage_usage(*, team_id: int) -> StorageUsage:
    """What the team's datasets and jobs (checkpoints and artifacts) take on
    disk; what is deleted but not yet purged is counted apart, not against the quota."""
    datasets = sum(item_bytes(d) for d in Dataset.objects.filter(team_id=team_id).only(
        "size_bytes", "source_files", "file"))
    jobs = Job.objects.filter(team_id=team_id)
    finished = jobs.filter(status__in=Job.FINISHED).aggregate(total=Sum("disk_bytes"))["total"] or 0
    running = sum(directory_size(job_output_dir(pk)) for pk in
                  jobs.exclude(status__in=Job.FINISHED).values_list("pk", flat=True))
    pending = Deletion.objects.filter(team_id=team_id, restored_at=None, purged_at=None).aggregate(
        total=Sum("bytes"))["total"] or 0
    quota_gb = _quota_gb(team_id)
    return StorageUsage(datasets_bytes=datasets, jobs_bytes=finished + running, awaiting_purge_bytes=pending,
                        quota_bytes=int(quota_gb * 2**30))  # GB as filesizeformat counts them


def deletions_for_teams(*, team_ids) -> models.QuerySet:
    return Deletion.objects.filter(team_id__in=team_ids).select_related("user")[:100]


def _quota_gb(team_id: int) -> float:
    return TeamQuota.objects.filter(team_id=team_id).values_list("storage_gb", flat=True).first() or 0


def storage_quota_refusal(*, team_id: int, adding_bytes: int = 0) -> str:
    """Why the team may not store more now ("" when it may): its quota is
    reached, or ``adding_bytes`` (an upload) would pass it. Every job submit
    and upload asks: without a quota it answers from one query, not by
    measuring the team's files."""
    if not _quota_gb(team_id):
        return ""
    usage = team_storage_usage(team_id=team_id)
    if not usage.quota_bytes or (usage.used_bytes < usage.quota_bytes
                                 and usage.used_bytes + adding_bytes <= usage.quota_bytes):
        return ""
    adds = f" and this adds {filesizeformat(adding_bytes)}" if adding_bytes else ""
    return (f"Your team's storage is full: it uses {filesizeformat(usage.used_bytes)} of its "
            f"{filesizeformat(usage.quota_bytes)} quota{adds}. Delete datasets, jobs or artifacts you no longer "
            "need (the Storage page lists them), or ask an admin to raise the quota.")


def largest_items(*, team_id: int, count: int = 10) -> list[tuple[str, int, models.Model, str]]:
    """The team's biggest datasets and jobs: (description, bytes, object, delete kind), biggest first."""
    datasets = [(d, "dataset") for d in Dataset.objects.filter(team_id=team_id).order_by("-size_bytes")[:count]]
    jobs = [(j, "job") for j in Job.objects.filter(team_id=team_id, status__in=Job.FINISHED)
            .order_by("-disk_bytes")[:count]]
    rows = [(describe(obj), item_bytes(obj), obj, kind) for obj, kind in datasets + jobs]
    return sorted((row for row in rows if row[1]), key=lambda row: -row[1])[:count]

