"""Run one job from its stored config and record how it ended."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils.module_loading import import_string

from studio.jobs.kinds import JOB_KINDS
from studio.jobs.models import Job
from studio.jobs.services import (job_finish, job_heartbeat, job_requeue_lost_group, job_requeue_preempted,
                                 jobs_recover_lost)
from studio.jobs.services_queue import job_claim_next, job_join_next, queue_nudge
from studio.storage.services import storage_purge_due, storage_sweep_orphans
from studio.workers.models import WorkerNode
from studio.workers.services import workers_purge_gone
from tuning.errors import TuningError
from worker.devices import worker_devices
from worker.distributed_runs import GroupLost
from worker.gang_runs import follow, rendezvous_address
from worker.sink import JobSink

log = logging.getLogger(__name__)
# The job this worker process runs now (None when idle): read by worker/registry.py.
current_job_id: int | None = None


class Heartbeat:
    """Renews the job's heartbeat from a background thread while the job
    runs, also through long silent phases such as loading a large model."""

    def __init__(self, job_id: int):
        self.job_id, self.stopped = job_id, threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def _beat(self):
        try:
            while not self.stopped.wait(settings.JOB_HEARTBEAT_S):
                try:
                    job_heartbeat(job_id=self.job_id)
                except DatabaseError:
                    # A busy or restarting database: the next beat tries again. A thread that died here would
                    # let the job be taken back as lost while it runs.
                    log.warning("job %s: heartbeat not recorded", self.job_id, exc_info=True)
                    connection.close()
        finally:
            connection.close()  # this thread's own database connection

    def __enter__(self):
        global current_job_id
        current_job_id = self.job_id
        self.thread.start()
        return self

    def __exit__(self, *exc):
        global current_job_id
        current_job_id = None
        self.stopped.set()
        self.thread.join()


ORPHAN_SWEEP_EVERY_S = 3600  # it walks the media folders: not every round


def recover_lost_jobs_forever(stop: threading.Event) -> None:
    """Every worker's housekeeping: take back jobs whose worker died (see
    jobs_recover_lost), wake pools with queued jobs, forget long-gone workers,
    purge deletions whose retention window has passed and, hourly, remove
    files no row names (storage_sweep_orphans)."""
    last_sweep = float("-inf")
    while not stop.wait(settings.JOB_HEARTBEAT_S):
        try:
            recovered = jobs_recover_lost()
            if recovered:
                log.warning("took back jobs of lost workers: %s", recovered)
            woken = queue_nudge()
            if woken:
                log.info("woke idle pools with queued jobs: %s", woken)
            workers_purge_gone()
            purged = storage_purge_due()
            if purged:
                log.info("purged deleted things whose retention ended: deletions %s", purged)
            if time.monotonic() - last_sweep > ORPHAN_SWEEP_EVERY_S:
                last_sweep = time.monotonic()
                storage_sweep_orphans()
        except Exception:  # the next round tries again; never kill the worker over it
            log.exception("recovering lost jobs failed")
        finally:
            connection.close()


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process is there
    except ProcessLookupError:
        return False
    except PermissionError:  # there, under another user
        return True
    return True


def take_back_from_dead_namesake(name: str) -> list[int]:
    """Called as a worker starts, before it takes a job: if the worker last
    registered under ``name`` ran on this machine in a process that no
    longer exists (the launcher restarts a killed worker under the same
    name), its jobs are taken back now. Waiting JOB_LOST_AFTER_S for their
    heartbeat to go stale would let this worker start the next queued job
    first, and the lost one would wait behind it."""
    node = WorkerNode.objects.filter(name=name).values("hostname", "pid").first()
    if (node is None or node["hostname"] != socket.gethostname() or node["pid"] == os.getpid()
            or _process_exists(node["pid"])):
        return []
    recovered = jobs_recover_lost(worker_name=name)
    if recovered:
        log.warning("took back the jobs of the dead worker %s (pid %s): %s", name, node["pid"], recovered)
    return recovered


def _run(job: Job) -> tuple[str, str]:
    """Run the job's kind of work (the function its row in JOB_KINDS names)."""
    kind = JOB_KINDS.get(job.kind)
    if kind is None:
        raise TuningError(f"{job.kind} jobs are not supported by this worker")
    return import_string(kind.run)(job, JobSink(job))


def _follow(seat) -> str:
    """Train on this worker's devices for a job another worker heads; only the head records and ends it."""
    global current_job_id
    current_job_id = seat.job.pk  # the workers page shows this worker busy with it
    try:
        return follow(seat)
    finally:
        current_job_id = None


def run_job(job_id: int, *, worker_name: str = "", pool: str = "", devices: int | None = None) -> str:
    """Run the job the pool should run next (usually ``job_id``, the one whose
    enqueue sent this wake-up; a higher-priority one if it came meanwhile)
    among those that fit this worker's ``devices`` (by default, what
    worker/devices.py reads)."""
    if not pool:
        pool = Job.objects.filter(pk=job_id).values_list("device_pool", flat=True).first() or "default"
    devices = worker_devices().count if devices is None else devices
    worker_name = worker_name or socket.gethostname()
    seat = job_join_next(pool=pool, worker_name=worker_name, devices=devices)
    if seat is not None:  # a job on several workers waits for this one to join its rendezvous
        return _follow(seat)
    job = job_claim_next(pool=pool, worker_name=worker_name, devices=devices, rendezvous=rendezvous_address())
    if job is None:
        log.info("nothing in pool %s may start now (woken for job %s); skipping", pool, job_id)
        return "skipped"
    job_id = job.pk
    try:
        with Heartbeat(job_id):
            status, summary = _run(job)
    except TuningError as exc:
        job_finish(job_id=job_id, status=Job.Status.FAILED, failure_kind=Job.FailureKind.USER_ERROR, message=str(exc))
        return Job.Status.FAILED
    except GroupLost as exc:  # a job on several workers lost one of them: back in the queue, as a lost head's job
        log.warning("job %s: %s; taking it back", job_id, exc)
        return job_requeue_lost_group(job_id=job_id, reason=str(exc))
    except Exception as exc:
        # The traceback goes to the worker's log for an admin; the job page
        # gets one readable line.
        log.exception("job %s failed", job_id)
        job_finish(job_id=job_id, status=Job.Status.FAILED, failure_kind=Job.FailureKind.ERROR,
                   message=f"Internal error in the worker ({type(exc).__name__}: {str(exc)[:300]}). "
                           f"An admin can find the details in the worker log.")
        return Job.Status.FAILED
    if status == "waiting":  # a merge search put itself back in the queue until a candidate's job ends
        return Job.Status.QUEUED
    if status == "cancelled" and job_requeue_preempted(job_id=job_id):
        return Job.Status.QUEUED  # stopped to give its worker to a more urgent job; back in the queue
    status = Job.Status.CANCELLED if status == "cancelled" else Job.Status.SUCCEEDED
    job_finish(job_id=job_id, status=status, message=summary)
    return status
