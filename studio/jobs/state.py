"""The job state machine: the one writer of a job's status.

    validating → queued → running → succeeded | failed | cancelled
    (running → cancelling → cancelled when a user cancels a running job)

Every kind of job (``studio.jobs.kinds``) goes through these functions;
the services above them (runs, the queue, chains, dataset work) decide
*when*, these decide *how*: each change is a ``status`` event stored with
the job's fields in one transaction and pushed live after the commit.
"""

from __future__ import annotations

import logging

from django.db import transaction

from studio.celery import app as celery_app
from studio.jobs.events import job_event_record
from studio.jobs.kinds import JOB_KINDS, job_kind_pool
from studio.jobs.models import Job
from studio.jobs.queue_turns import queue_turns_changed
from studio.storage.selectors import storage_quota_refusal
from tuning.errors import ConfigError

log = logging.getLogger(__name__)
RUN_JOB_TASK = "worker.tasks.run_job"  # sent by name: the web side never imports worker/


def job_set_status(job_id: int, status: str, *, message: str = "", **fields) -> None:
    data = {"status": status, **({"message": message} if message else {})}
    if "failure_kind" in fields:
        data["failure_kind"] = fields["failure_kind"]
    job_event_record(job_id=job_id, kind="status", data=data, job_updates={"status": status, **fields})
    if status == Job.Status.QUEUED or status in Job.FINISHED:  # the pool's queue or usage changed
        queue_turns_changed(job_id=job_id, ended=status in Job.FINISHED)


def job_enqueue(*, job_id: int, pool: str) -> None:
    """One wake-up for the pool's workers (the database holds the queue).

    Best effort, like the live push of events: it runs after the job was
    committed, so a broker that is down (Redis restarting) must not turn the
    request into an error the user would answer by submitting the job again.
    The queued job is not lost: the workers' periodic nudge
    (``services_queue.queue_nudge``) and the end of the job before it wake
    the pool."""
    try:
        celery_app.send_task(RUN_JOB_TASK, args=[job_id], queue=pool)
    except Exception as exc:  # kombu's OperationalError, or whatever the broker's client raises
        log.warning("could not wake pool %s for job %s (the queue will be nudged): %s", pool, job_id, exc)


def job_create(*, kind: str, team, owner, config: dict, name: str = "", dataset=None, base_model=None,
               pool: str = "", input_artifacts=(), depends_on: Job | None = None, progress_total: int = 0) -> Job:
    """Store a job of ``kind`` as queued and send it to its pool (``pool``, or
    the one its kind names) once the transaction commits; with ``depends_on`` it waits for that job instead
    (``services_steps.job_release_dependents`` sends it on)."""
    if kind not in JOB_KINDS:
        raise ConfigError({"kind": f"unknown job kind '{kind}'; known: {', '.join(JOB_KINDS)}"})
    job = Job.objects.create(team=team, owner=owner, kind=kind, name=(name or JOB_KINDS[kind].label)[:200],
                             config=config, dataset=dataset, base_model=base_model,
                             device_pool=pool or job_kind_pool(kind),
                             input_artifact_ids=[a.pk for a in input_artifacts], depends_on=depends_on)
    job_submit(job=job, progress_total=progress_total)
    job.refresh_from_db()  # the status and seq written by job_submit
    return job


def job_submit(*, job: Job, **fields) -> None:
    """Move a stored job (validating) to queued and wake its pool after the
    commit, or, for a chain step, leave it waiting for the step before.
    Raises ConfigError ("storage") when the job would write files and its
    team is over its storage quota (the caller's transaction rolls back)."""
    kind = JOB_KINDS.get(job.kind)
    if kind is not None and kind.stores_files and (refusal := storage_quota_refusal(team_id=job.team_id)):
        raise ConfigError({"storage": refusal})
    if job.depends_on_id is None:
        job_set_status(job.pk, Job.Status.QUEUED, **fields)
        transaction.on_commit(lambda: job_enqueue(job_id=job.pk, pool=job.device_pool))
    else:
        before = job.depends_on
        job_set_status(job.pk, Job.Status.QUEUED, message=f"Waits for job #{before.pk} ({before.name})", **fields)
