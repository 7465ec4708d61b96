"""Delete (soft), restore and purge; the only writer of ``Deletion`` rows and
of the ``deletion`` mark on datasets, jobs, artifacts and base models."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import models, transaction
from django.db.models import ProtectedError, Q
from django.utils import timezone

from studio.accounts.models import Membership
from studio.accounts.policy import Action, allows
from studio.accounts.selectors import membership_role
from studio.artifacts.models import Artifact
from studio.audit.services import audit_record
from studio.catalog.models import BaseModel
from studio.datasets.models import Dataset
from studio.jobs.models import Job, job_output_dir
from studio.storage.files import remove_under_media
from studio.storage.models import Deletion
from studio.storage.selectors import DELETABLE_MODELS, describe, removal_bytes, removal_plan, stored_names

log = logging.getLogger(__name__)

AUDIT_ACTIONS = {Dataset: "dataset.deleted", Job: "job.deleted", Artifact: "artifact.deleted",
                 BaseModel: "model.deleted"}
STALE_PURGE = timedelta(hours=1)  # a purge claimed longer ago than this died; another worker takes it


class StorageRefusal(Exception):
    """A delete or restore that cannot be done as asked: ``message`` says why and
    what to do, ``items`` names the things in the way; ``status`` is the HTTP
    answer (403: not allowed, 409: something depends on it or still runs)."""

    def __init__(self, message: str, *, items: list[str] = (), status: int = 409):
        super().__init__(message)
        self.message, self.items, self.status = message, list(items), status


def _owner_id(obj: models.Model) -> int | None:
    if isinstance(obj, Dataset):
        return obj.created_by_id
    if isinstance(obj, Job):
        return obj.owner_id
    if isinstance(obj, Artifact):
        return obj.job.owner_id
    if isinstance(obj, BaseModel):
        return obj.added_by_id
    return None


def may_delete(*, user, obj: models.Model, roles: dict | None = None) -> bool:
    """Team things (a team's own base models too): their maker or a team admin. Base models shared by
    every team: staff only."""
    if isinstance(obj, BaseModel) and obj.team_id is None:
        return bool(user and user.is_authenticated and user.is_staff)
    return allows(user=user, action=Action.DELETE, team_id=obj.team_id, owner_id=_owner_id(obj), roles=roles)


def _check(user, plan, *, chain: bool) -> list[models.Model]:
    refused_text = ("Members can delete only what they made; a team admin can delete anything of the team "
                    "(base models: a staff user).")
    if not may_delete(user=user, obj=plan.target):  # before saying anything about what depends on it
        raise StorageRefusal(refused_text, items=[describe(plan.target)], status=403)
    if plan.dependents and not chain:
        raise StorageRefusal(
            f"{len(plan.dependents)} thing(s) depend on {describe(plan.target)}. Delete them first, or choose "
            "to delete the whole chain.", items=[describe(obj) for obj in plan.dependents])
    if isinstance(plan.target, BaseModel) and plan.dependents:
        raise StorageRefusal("A base model is removed only once no job or artifact of any team uses it.",
                             items=[describe(obj) for obj in plan.dependents])
    if unfinished := plan.unfinished_jobs(chain=chain):
        raise StorageRefusal("Jobs that have not ended cannot be deleted; cancel them first (or wait for them).",
                             items=[describe(job) for job in unfinished])
    # The chain: each must be the user's to delete (a version's own analyses go with it whoever ran them).
    if refused := [obj for obj in plan.dependents if chain and not may_delete(user=user, obj=obj)]:
        raise StorageRefusal(refused_text, items=[describe(obj) for obj in refused], status=403)
    return plan.removes(chain=chain)


def storage_delete(*, user, target: models.Model, chain: bool = False, request=None) -> Deletion:
    """Mark ``target`` (and its parts; with ``chain``, everything that depends
    on it) deleted, restorable until the retention window ends. Raises
    StorageRefusal, changing nothing, when it may not be done as asked."""
    with transaction.atomic():
        try:  # as it is now, not as the caller read it (a job may have ended since)
            target = type(target).objects.get(pk=target.pk)
        except type(target).DoesNotExist:
            raise StorageRefusal(f"{describe(target)} is already deleted.") from None
        plan = removal_plan(target)
        removed = _check(user, plan, chain=chain)
        now = timezone.now()
        deletion = Deletion.objects.create(
            team_id=getattr(target, "team_id", None), user=user, username=user.get_username(),
            label=describe(target)[:300], bytes=removal_bytes(removed),
            items=[{"type": obj._meta.label_lower, "id": obj.pk, "label": describe(obj)} for obj in removed],
            purge_after=now + timedelta(hours=settings.DELETED_RETENTION_HOURS))
        for obj in removed:
            type(obj).everything.filter(pk=obj.pk).update(deletion=deletion)
        audit_record(user=user, team=getattr(target, "team", None), action=AUDIT_ACTIONS[type(target)],
                     target=target, request=request,
                     detail={"deletion": deletion.pk, "with": [item["label"] for item in deletion.items[1:]],
                             "bytes": deletion.bytes, "purge_after": deletion.purge_after})
    return deletion


def may_restore(*, user, deletion: Deletion) -> bool:
    if deletion.team_id is None:
        return bool(user.is_staff)
    role = membership_role(user=user, team_id=deletion.team_id)
    return role == Membership.Role.ADMIN or (role == Membership.Role.MEMBER and deletion.user_id == user.pk)


def storage_restore(*, user, deletion_id: int, request=None) -> Deletion:
    """Bring back everything one delete removed, while its purge has not begun."""
    with transaction.atomic():
        deletion = Deletion.objects.select_for_update().get(pk=deletion_id)
        if not may_restore(user=user, deletion=deletion):
            raise StorageRefusal("Only who deleted it or a team admin can restore it.", status=403)
        if not deletion.is_pending or deletion.purge_started_at is not None:
            raise StorageRefusal("Its files are already being removed; it can no longer be restored.")
        for model in DELETABLE_MODELS:
            model.everything.filter(deletion=deletion).update(deletion=None)
        deletion.restored_at = timezone.now()
        deletion.save(update_fields=["restored_at"])
        audit_record(user=user, team=deletion.team, action="storage.restored", request=request,
                     detail={"deletion": deletion.pk, "label": deletion.label,
                             "items": [item["label"] for item in deletion.items]})
    return deletion


def _files_of(deletion: Deletion) -> list[str]:
    """Every path the purge of ``deletion`` removes: job directories, the
    directories of artifacts deleted without their job, and data files no
    other dataset row (deleted or not) still names."""
    paths = [str(job_output_dir(pk)) for pk in Job.everything.filter(deletion=deletion).values_list("pk", flat=True)]
    paths += [artifact.path for artifact in Artifact.everything.filter(deletion=deletion).exclude(
        job__deletion=deletion)]
    datasets = list(Dataset.everything.filter(deletion=deletion))
    names = set().union(*map(stored_names, datasets))
    still_named = set()
    for other in Dataset.everything.exclude(deletion=deletion).filter(team_id__in={d.team_id for d in datasets}):
        still_named |= stored_names(other) & names
    paths += [default_storage.path(name) for name in sorted(names - still_named)]
    # A downloaded model's files are the studio's; a folder model's (or the bundled one's) are not.
    models_dir = Path(settings.MEDIA_ROOT).resolve() / "models"
    paths += [model.ref for model in BaseModel.everything.filter(deletion=deletion, source=BaseModel.Source.HUB)
              if Path(model.ref).resolve().is_relative_to(models_dir)]
    return paths


def _purge(deletion: Deletion) -> int:
    # Rows first, in one transaction (a ProtectedError leaves everything as it
    # was); the paths are noted beforehand so a purge that dies after the rows
    # went still finds its files on the next try.
    if deletion.paths is None:
        deletion.paths = _files_of(deletion)
        deletion.save(update_fields=["paths"])
    with transaction.atomic():
        for model in DELETABLE_MODELS:  # jobs before the datasets and models they PROTECT
            model.everything.filter(deletion=deletion).delete()
    freed = sum(remove_under_media(path) for path in deletion.paths)
    with transaction.atomic():
        Deletion.objects.filter(pk=deletion.pk).update(purged_at=timezone.now(), purge_blocked="")
        if deletion.team_id is not None:
            audit_record(user=None, team=deletion.team, action="storage.purged",
                         detail={"deletion": deletion.pk, "label": deletion.label, "bytes_freed": freed})
    return freed


def storage_purge_due(*, now=None) -> list[int]:
    """Purge every deletion whose retention window has passed (oldest first);
    the ids purged. Run by every worker's housekeeping loop and by
    ``manage.py purge_deleted``; claims make concurrent purges safe."""
    now = now or timezone.now()
    due = Deletion.objects.filter(purge_after__lte=now, restored_at=None, purged_at=None).filter(
        Q(purge_started_at=None) | Q(purge_started_at__lt=now - STALE_PURGE)).order_by("at", "pk")
    purged = []
    for deletion in due:
        claimed = Deletion.objects.filter(pk=deletion.pk, purge_started_at=deletion.purge_started_at,
                                          purged_at=None, restored_at=None).update(purge_started_at=now)
        if not claimed:
            continue
        try:
            _purge(deletion)
            purged.append(deletion.pk)
        except ProtectedError as exc:  # something deleted later, and not purged yet, still points at it
            blockers = ", ".join(sorted({str(obj) for obj in exc.protected_objects})[:5])
            Deletion.objects.filter(pk=deletion.pk).update(purge_started_at=None,
                                                          purge_blocked=f"still used by {blockers}")
            log.warning("purge of deletion %s postponed: still used by %s", deletion.pk, blockers)
    return purged


ORPHAN_MIN_AGE = timedelta(hours=1)  # younger files may belong to a row still being written (an upload)


def storage_sweep_orphans(*, now=None) -> list[str]:
    """Remove what the studio's folders hold that no row names, older than ORPHAN_MIN_AGE: data files
    of no dataset (a process killed between storing a file and its row), job folders of no job, and
    the staging folders of model downloads whose job has ended. The paths removed."""
    now = now or timezone.now()
    cutoff = (now - ORPHAN_MIN_AGE).timestamp()
    media = Path(settings.MEDIA_ROOT)
    removed = []

    def old(path: Path) -> bool:
        return path.lstat().st_mtime < cutoff

    named = set().union(*map(stored_names, Dataset.everything.only("file", "source_files")))
    datasets_dir = media / "datasets"
    for path in sorted(datasets_dir.rglob("*")) if datasets_dir.is_dir() else []:
        if path.is_file() and old(path) and str(path.relative_to(media)) not in named:
            remove_under_media(path)
            removed.append(str(path))
    jobs_dir = media / "jobs"
    job_ids = set(Job.everything.values_list("pk", flat=True))
    for path in sorted(jobs_dir.iterdir()) if jobs_dir.is_dir() else []:
        if path.is_dir() and path.name.isdigit() and int(path.name) not in job_ids and old(path):
            remove_under_media(path)
            removed.append(str(path))
    downloads = media / "models" / "downloads"
    unfinished = {f"job-{pk}" for pk in Job.everything.exclude(status__in=Job.FINISHED).values_list("pk", flat=True)}
    for path in sorted(downloads.iterdir()) if downloads.is_dir() else []:
        if path.name not in unfinished and old(path):
            remove_under_media(path)
            removed.append(str(path))
    if removed:
        log.warning("removed %d file(s) and folder(s) no row names: %s", len(removed), removed[:10])
    return removed
