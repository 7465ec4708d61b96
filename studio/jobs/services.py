"""Runs of every kind: creating a training job, recording what a running
job reports, cancelling, finishing, resuming, heartbeats and taking back
the jobs of lost workers. Status changes go through ``state.py``; what
happens when a job ends (chain steps released, the owner told, the pool
woken) happens here, for every kind alike."""

from __future__ import annotations

import logging
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from studio.notifications.webhooks import webhooks_enqueue_for_job
from studio.datasets.selectors import dataset_training_refusal
from studio.jobs.estimates import devices_refusal, memory_refusal, train_pool
from studio.jobs.events import job_event_record
from studio.jobs.kinds import JOB_KINDS
from studio.jobs.models import Job, JobEvent, job_output_dir
from studio.jobs.services_judge import forgetting_harness, job_create_forgetting
from studio.jobs.services_queue import queue_wake
from studio.jobs.services_search import merge_search_is_candidate, merge_search_unfinished_children
from studio.jobs.services_steps import job_release_dependents
from studio.jobs.state import job_enqueue, job_set_status, job_submit
from studio.storage.files import directory_size
from studio.notifications.services import notification_create_for_job
from tuning.checkpoints import checkpoint_step, latest
from studio.jobs.source_adapters import with_source_adapters
from tuning.config import TrainConfig, check_against_model, config_to_dict
from tuning.errors import ConfigError
from tuning.methods import METHODS
from tuning.preference import loss_data_problem

log = logging.getLogger(__name__)


def job_create_train(*, user, team, dataset, base_model, settings_values: dict, method_params: dict,
                     name: str = "") -> Job:
    """Validate the settings, store the job as queued and enqueue it.

    Raises tuning.errors.ConfigError (every bad field) and stores nothing
    when the settings are invalid; tuning.errors.ModelError when the base
    model's config cannot be read.
    """
    refusal = dataset_training_refusal(dataset)  # unconfirmed columns, blocking lint findings
    if refusal:
        raise ConfigError({"dataset": refusal})
    settings_values = _with_reward_model(settings_values, team)
    method_params, sources = with_source_adapters(METHODS.get(settings_values.get("method"), METHODS["lora"]),
                                                  method_params, team=team, base_model=base_model)
    with transaction.atomic():
        job = Job.objects.create(team=team, owner=user, kind=Job.Kind.TRAIN, dataset=dataset,
                                 base_model=base_model, config={}, device_pool=settings.DEFAULT_DEVICE_POOL,
                                 name=name[:200], input_artifact_ids=sources)
        config = TrainConfig.from_dict({
            **settings_values,
            "method_params": method_params,
            "base_model": base_model.ref,
            "base_model_name": base_model.upstream_id or base_model.name,
            "dataset_path": dataset.file.path,
            "dataset_name": Path(dataset.file.name).name,
            "dataset_sha256": dataset.sha256,
            "output_dir": str(job_output_dir(job.pk)),
            "trust_remote_code": settings.TRUST_REMOTE_CODE,
        })
        if config.task not in dataset.tasks:
            raise ConfigError({"task": f"{dataset.name} is {dataset.schema} data, usable for "
                                       f"{', '.join(dataset.tasks)}; pick one of those tasks or another dataset"})
        if config.task == "preference" and (problem := loss_data_problem(config.preference_loss, dataset.schema)):
            raise ConfigError({"preference_loss": problem})
        if METHODS[config.method].needs_cuda and not settings.GPU_POOLS:
            raise ConfigError({"method": f"{METHODS[config.method].label} needs a CUDA GPU worker; none is "
                                         f"registered (GPU_POOLS)"})
        job.device_pool, job.devices = train_pool(METHODS[config.method], settings.GPU_POOLS), config.devices
        if too_many := devices_refusal(pool=job.device_pool, devices=config.devices):
            raise ConfigError({"devices": too_many})
        check_against_model(config, on_worker=False)  # impossible combinations are refused now, not after queueing
        too_big = memory_refusal(base_model=base_model, config=config, dataset=dataset, gpu_pools=settings.GPU_POOLS)
        if too_big:  # rather than failing out of memory after its wait in the queue
            raise ConfigError({"batch_size": too_big})
        job.config = config_to_dict(config)
        job.name = job.name or f"{METHODS[config.method].label} on {dataset.name}"
        job.save(update_fields=["config", "name", "device_pool", "devices"])
        job_submit(job=job, progress_total=config.max_steps)
        if config.forgetting_threshold_pct > 0:  # a chained job, queued when training has made its output
            job_create_forgetting(user=user, team=team, threshold_pct=config.forgetting_threshold_pct,
                                  depends_on=job,
                                  harness=forgetting_harness(harness_tasks=config.forgetting_harness_tasks))
    job.refresh_from_db()
    return job


def _with_reward_model(values: dict, team) -> dict:
    """GRPO's reward model named by an artifact id (the form's and the API's way): the artifact's
    directory and, for an adapter, its base model. Only a reward job's output of the same team."""
    from studio.artifacts.models import Artifact

    chosen = str(values.get("reward_model") or "").strip()
    if not chosen.isdigit():
        return values  # empty, or a directory given by an admin's script: TrainConfig checks the rest
    artifact = Artifact.objects.filter(team=team, pk=int(chosen)).select_related("base_model", "job").first()
    if artifact is None or (artifact.job.config or {}).get("task") != "reward":
        raise ConfigError({"reward_model": f"no reward model #{chosen} in this team: pick the output of a reward "
                                           f"job (task reward)"})
    base = artifact.base_model.ref if artifact.is_adapter and artifact.base_model else ""
    return {**values, "reward_model": artifact.path, "reward_model_base": base}


def job_progress(*, job_id: int, kind: str, data: dict) -> None:
    """Record an event reported by the running job."""
    updates = {}
    if kind == "metrics":
        updates = {"progress_step": data["step"], "progress_total": data["total_steps"], "last_loss": data["loss"],
                   "progress_phase": ""}
    elif kind == "progress":
        updates = {"progress_step": data["done"], "progress_total": data["total"],
                   "progress_phase": data["phase"][:100]}
    job_event_record(job_id=job_id, kind=kind, data=data, job_updates=updates)


def job_cancel(*, job: Job) -> Job:
    """Cancel at once if the job has not started; otherwise ask the worker to
    stop (it does so within one step and keeps a checkpoint)."""
    with transaction.atomic():
        if Job.objects.filter(pk=job.pk, status__in=[Job.Status.VALIDATING, Job.Status.QUEUED]).exists():
            # a merge search waits in the queue between its steps: it may have started long ago
            started = Job.objects.filter(pk=job.pk, started_at__isnull=False).exists()
            message = "Cancelled while waiting in the queue" if started else "Cancelled before it started"
            job_set_status(job.pk, Job.Status.CANCELLED, message=message, finished_at=timezone.now())
            _after_end(job, Job.Status.CANCELLED, message, notify_owner=False)
        elif Job.objects.filter(pk=job.pk, status__in=(Job.Status.RUNNING, Job.Status.PREEMPTING)).exists():
            job_set_status(job.pk, Job.Status.CANCELLING, message="Stopping after the current step")
        for child in merge_search_unfinished_children(search=job):  # a merge search's candidates go with it
            job_cancel(job=child)
    job.refresh_from_db()
    return job


def job_finish(*, job_id: int, status: str, failure_kind: str = "", message: str = "") -> None:
    """Called by the worker when the run ends."""
    assert status in Job.FINISHED, status
    disk_bytes = directory_size(job_output_dir(job_id))  # walked before the write lock is taken, not under it
    with transaction.atomic():
        job_set_status(job_id, status, message=message, failure_kind=failure_kind, failure_message=message,
                       finished_at=timezone.now(), disk_bytes=disk_bytes)
        job = Job.objects.select_related("owner").get(pk=job_id)
        _after_end(job, status, message)
        # A job held back by its team's quota may start now that this one ended.
        transaction.on_commit(lambda: queue_wake(pool=job.device_pool))


def _after_end(job: Job, status: str, message: str, *, notify_owner: bool = True) -> None:
    """What follows the end of any job: the chain steps waiting for it go on
    (or end), and, for kinds that notify, the owner is told and webhooks fire."""
    job_release_dependents(job_id=job.pk, status=status)
    kind = JOB_KINDS.get(job.kind)
    if kind is None or not kind.notifies or merge_search_is_candidate(job_id=job.pk):
        return  # a merge search's candidates are told of by the search, once
    if notify_owner:
        notification_create_for_job(job=job, status=status, message=message)
    # Signed, sent by a worker. robust: the job's end is committed by now, and a broker that is down must not
    # turn it into an error (a 500 for a cancel, a failed task on the worker); Django logs the lost send.
    transaction.on_commit(lambda: webhooks_enqueue_for_job(job_id=job.pk), robust=True)


def job_resume(*, job: Job, user) -> Job:
    """A new job that continues a cancelled or failed one from its last
    checkpoint (weights, optimizer, scheduler and data position), with the
    same settings."""
    checkpoint = job.latest_checkpoint()
    if checkpoint is None:
        raise ConfigError({"resume_from": "this job left no checkpoint to continue from"})
    settings_values = {key: value for key, value in job.config.items()
                       if key not in ("base_model", "base_model_name", "dataset_path", "dataset_name",
                                      "dataset_sha256", "output_dir", "trust_remote_code", "method_params")}
    return job_create_train(user=user, team=job.team, dataset=job.dataset, base_model=job.base_model,
                            settings_values={**settings_values, "resume_from": str(checkpoint)},
                            method_params=job.config["method_params"],
                            name=f"{job.name} (resumed from step {checkpoint_step(checkpoint)})")


def job_heartbeat(*, job_id: int) -> None:
    Job.objects.filter(pk=job_id, status__in=Job.HOLDING_WORKER).update(
        heartbeat_at=timezone.now())


def jobs_recover_lost(*, worker_name: str = "") -> list[int]:
    """Take back running jobs whose worker stopped renewing the heartbeat
    (killed, machine lost), or, with ``worker_name``, the jobs of that
    worker, known to be dead: requeue each (a training job resumes from its
    last checkpoint, other kinds start again, as their kind says), or fail
    it after JOB_MAX_ATTEMPTS starts. Safe to call from every worker at
    once: each job is claimed by one conditional update."""
    lost = Job.objects.filter(status__in=Job.HOLDING_WORKER)
    if worker_name:
        lost = lost.filter(worker_name=worker_name[:200])
    else:
        lost = lost.filter(heartbeat_at__lt=timezone.now() - timezone.timedelta(seconds=settings.JOB_LOST_AFTER_S))
    return [job.pk for job in lost if _recover(job, lost=f"Worker {job.worker_name or '?'} lost")]


def job_requeue_lost_group(*, job_id: int, reason: str) -> str:
    """Called by the head of a job on several workers when its group stopped because a rank or a whole worker
    was lost (``reason`` says which): the job is taken back at once as a lost worker's is (requeued at its
    place to resume from its last checkpoint, each step once; failed after JOB_MAX_ATTEMPTS starts; ended
    cancelled if it was stopping), rather than failing. Returns the job's status afterwards."""
    job = Job.objects.filter(pk=job_id, status__in=Job.HOLDING_WORKER).first()
    if job is not None:
        _recover(job, lost=reason)
    return Job.objects.values_list("status", flat=True).get(pk=job_id)


def _recover(job: Job, *, lost: str) -> bool:
    """Take back ``job``, whose run was lost (``lost`` says how), as jobs_recover_lost does. False when
    another worker got there first."""
    resumes = getattr(JOB_KINDS.get(job.kind), "resumes_from_checkpoint", False)
    checkpoint = latest(job_output_dir(job.pk) / "checkpoints") if resumes else None
    if job.status == Job.Status.CANCELLING:
        return _take_back(job, Job.Status.CANCELLED, f"{lost} while stopping", finished_at=timezone.now())
    if job.attempts >= settings.JOB_MAX_ATTEMPTS:
        message = (f"{lost} (start {job.attempts} of {settings.JOB_MAX_ATTEMPTS}); giving up. The events so far"
                   f"{' and the last checkpoint' if checkpoint else ''} are kept.")
        return _take_back(job, Job.Status.FAILED, message, failure_kind=Job.FailureKind.ERROR,
                          failure_message=message, finished_at=timezone.now())
    if resumes:  # training: from its last checkpoint, each step once in the events
        where = (f"resuming from {checkpoint.name}" if checkpoint
                 else "resuming from the start (no checkpoint yet)")
        fields = {"config": {**job.config, "resume_from": str(checkpoint) if checkpoint else ""}}
        redo_from = checkpoint_step(checkpoint) + 1 if checkpoint else 0
    else:  # dataset work, merges, exports: their results are written only at the end
        where, fields, redo_from = "starting again", {}, 0
    taken = _take_back(job, Job.Status.QUEUED, f"{lost}; {where} on the next free worker", redo_from=redo_from,
                       checkpoint=checkpoint, **fields)
    if taken:
        transaction.on_commit(lambda: job_enqueue(job_id=job.pk, pool=job.device_pool))
    return taken


def job_requeue_preempted(*, job_id: int) -> bool:
    """Called by the worker when a run it stopped was being preempted: the
    job goes back to the queue at its old place (its queue order is kept),
    to resume from the checkpoint it just saved, each step once. False when
    it was not preempted (or a cancel came meanwhile): the run ends as a cancel."""
    job = Job.objects.filter(pk=job_id, status=Job.Status.PREEMPTING).first()
    if job is None:
        return False
    checkpoint = latest(job_output_dir(job.pk) / "checkpoints")
    step = checkpoint_step(checkpoint) if checkpoint else 0
    where = f"resumes from {checkpoint.name}" if checkpoint else "starts again"
    taken = _take_back(job, Job.Status.QUEUED, f"Preempted at step {step}; {where} when a worker is free",
                       redo_from=step + 1 if checkpoint else 0, checkpoint=checkpoint,
                       config={**job.config, "resume_from": str(checkpoint) if checkpoint else ""})
    if taken:
        transaction.on_commit(lambda: job_enqueue(job_id=job.pk, pool=job.device_pool))
    return taken


# Events that belong to one training step: a resumed run records them again for the steps after its checkpoint.
STEP_EVENT_KINDS = ("metrics", "eval", "samples", "checkpoint")
# What a run reports once, when its work is done: a run taken back from a lost worker makes it again.
RESULT_EVENT_KINDS = ("artifact",)


def job_redo_steps_after(*, job_id: int, step: int) -> None:
    """A run restarted within its claim (a process of a multi-device job died and torchrun restarted the
    group from the checkpoint of ``step``) records the later steps again: what the lost attempt recorded
    for them, and any result, is superseded, as after a lost worker."""
    checkpoint = latest(job_output_dir(job_id) / "checkpoints") if step else None
    _supersede_redone(Job(pk=job_id), step + 1, checkpoint=checkpoint)


def _supersede_redone(job: Job, from_step: int, *, checkpoint: Path | None = None) -> None:
    """Mark as superseded what the next attempt records again: the step events from ``from_step`` on (all of
    them for work that starts again) and the results of the lost attempt. Readers then show each step and
    each result once, the newer. The ``checkpoint`` it resumes from is listed among the job's checkpoints
    even when the run was lost between writing it and reporting it (a peer rank killed at the barrier after
    the save)."""
    JobEvent.objects.filter(job_id=job.pk).filter(
        Q(kind__in=STEP_EVENT_KINDS, data__step__gte=from_step) | Q(kind__in=RESULT_EVENT_KINDS)
    ).update(superseded=True)
    if checkpoint is not None:
        step = checkpoint_step(checkpoint)
        if not JobEvent.objects.filter(job_id=job.pk, kind="checkpoint", data__step=step, superseded=False).exists():
            job_event_record(job_id=job.pk, kind="checkpoint", data={"step": step, "path": str(checkpoint)})


def _take_back(job: Job, status: str, message: str, *, redo_from: int | None = None,
               checkpoint: Path | None = None, **fields) -> bool:
    """Move a lost job to ``status`` unless another worker got there first
    (its status or heartbeat changed since we read it). With ``redo_from``
    (the first step the next attempt runs) what that attempt records again
    is superseded in the same transaction, before any worker can pick the
    job up and record it; the ``checkpoint`` it resumes from is listed."""
    with transaction.atomic():
        if not Job.objects.filter(pk=job.pk, status=job.status, heartbeat_at=job.heartbeat_at).update(
                status=status, **fields):
            return False
        if redo_from is not None:
            _supersede_redone(job, redo_from, checkpoint=checkpoint)
        data = {"status": status, "message": message}
        if "failure_kind" in fields:
            data["failure_kind"] = fields["failure_kind"]
        job_event_record(job_id=job.pk, kind="status", data=data)
        if status in Job.FINISHED:
            _after_end(job, status, message)
    return True
