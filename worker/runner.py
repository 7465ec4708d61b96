"""Run one job from its stored config and record how it ended."""

from __future__ import annotations

import logging
import socket

from studio.jobs.models import Job
from studio.jobs.services import job_finish, job_start
from tuning.errors import TuningError
from worker.sink import JobSink

log = logging.getLogger(__name__)


def run_job(job_id: int, *, worker_name: str = "") -> str:
    job = job_start(job_id=job_id, worker_name=worker_name or socket.gethostname())
    if job is None:
        log.info("job %s is not queued any more; skipping", job_id)
        return "skipped"
    if job.kind != Job.Kind.TRAIN:
        job_finish(job_id=job_id, status=Job.Status.FAILED, failure_kind=Job.FailureKind.ERROR,
                   message=f"{job.kind} jobs are not supported by this worker yet")
        return Job.Status.FAILED
    from tuning.config import TrainConfig
    from tuning.train import run_train

    try:
        result = run_train(TrainConfig.from_dict(job.config), JobSink(job))
    except TuningError as exc:
        job_finish(job_id=job_id, status=Job.Status.FAILED, failure_kind=Job.FailureKind.USER_ERROR, message=str(exc))
        return Job.Status.FAILED
    except Exception as exc:
        # The traceback goes to the worker's log for an admin; the job page
        # gets one readable line.
        log.exception("job %s failed", job_id)
        job_finish(job_id=job_id, status=Job.Status.FAILED, failure_kind=Job.FailureKind.ERROR,
                   message=f"Internal error in the worker ({type(exc).__name__}: {str(exc)[:300]}). "
                           f"An admin can find the details in the worker log.")
        return Job.Status.FAILED
    if result.status == "cancelled":
        job_finish(job_id=job_id, status=Job.Status.CANCELLED,
                   message=f"Cancelled at step {result.steps}; the last checkpoint is kept")
        return Job.Status.CANCELLED
    job_finish(job_id=job_id, status=Job.Status.SUCCEEDED,
               message=f"Finished {result.steps} steps, final loss {result.final_loss:.4f}")
    return Job.Status.SUCCEEDED
