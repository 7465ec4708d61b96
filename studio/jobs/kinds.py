"""Every kind of work the studio runs is a kind of Job, declared here.

A row names the worker function that runs it (by dotted path: the web side
never imports ``worker``), and how the one job system treats it: the pool
it goes to (short dataset work to one that training never occupies), what
happens after a lost worker, who hears how it ended. Adding a
kind is one function on the worker side and one ``register_job_kind`` line;
the queue, the claim, the heartbeat, recovery after a lost worker, the event
stream and the progress component are the same for every kind.

The worker function is called as ``run(job, sink)`` with the claimed Job
and the sink its events go to (``worker.sink.JobSink``), and returns
``(status, summary)``: status "succeeded" or "cancelled", summary one line
for the job page (or "waiting": the function put the job back in the queue
itself, as a merge search does between its steps). It raises ``tuning.errors.TuningError`` for a problem the
user can fix (the job fails as ``user_error`` with that message).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True, kw_only=True)
class JobKind:
    name: str
    label: str  # what the queue and the job list call it
    run: str  # dotted path of the worker function, imported on the worker only
    # After a lost worker: True resumes from the job's last checkpoint (the
    # run keeps them), False starts the work again from the beginning.
    resumes_from_checkpoint: bool = False
    # The owner hears how it ended (bell, e-mail) and webhooks fire. Dataset
    # work shows its result on the page the user is looking at instead.
    notifies: bool = True
    # It writes files (checkpoints, artifacts, dataset versions): refused while
    # its team is over its storage quota. An analysis stores only a report.
    stores_files: bool = True
    # The setting that names the pool (Celery queue) its jobs go to unless a
    # job names one. Device work shares the device pools; short dataset work
    # has DATASET_POOL, which no training job occupies.
    pool_setting: str = "DEFAULT_DEVICE_POOL"


JOB_KINDS: dict[str, JobKind] = {}


def register_job_kind(kind: JobKind) -> JobKind:
    JOB_KINDS[kind.name] = kind
    return kind


def job_kind_pool(name: str) -> str:
    """The pool a job of kind ``name`` goes to when it names none."""
    return getattr(settings, JOB_KINDS[name].pool_setting)


register_job_kind(JobKind(name="train", label="Training", run="worker.kind_runs.run_train",
                          resumes_from_checkpoint=True))
register_job_kind(JobKind(name="merge", label="Merge", run="worker.kind_runs.run_merge"))
register_job_kind(JobKind(name="quantize", label="Quantize", run="worker.kind_runs.run_quantize"))
register_job_kind(JobKind(name="evaluate", label="Evaluate", run="worker.kind_runs.run_evaluate",
                          stores_files=False))
register_job_kind(JobKind(name="analyse", label="Dataset analysis", run="worker.dataset_runs.run_analysis",
                          notifies=False, stores_files=False, pool_setting="DATASET_POOL"))
register_job_kind(JobKind(name="diet", label="Dataset step", run="worker.dataset_runs.run_operation",
                          notifies=False, pool_setting="DATASET_POOL"))
register_job_kind(JobKind(name="model_add", label="Adding a model", run="worker.model_runs.run_model_add"))
register_job_kind(JobKind(name="publish", label="Publishing", run="worker.publish_runs.run_publish",
                          stores_files=False))
register_job_kind(JobKind(name="judge", label="Judged comparison", run="worker.judge_runs.run_judge",
                          stores_files=False))
register_job_kind(JobKind(name="forgetting", label="Forgetting check", run="worker.judge_runs.run_forgetting",
                          stores_files=False))
# A merge search's parent (studio/jobs/services_search.py): short steps between which it waits in the queue for
# its candidates, each a merge and an evaluate job of its own; a lost step is run again from the candidates' rows.
register_job_kind(JobKind(name="merge_search", label="Merge search", run="worker.search_runs.run_merge_search"))
