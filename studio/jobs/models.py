"""Jobs and their events. Job state changes only through ``state.py`` (and the
services built on it)."""

import time
from pathlib import Path

from django.conf import settings
from django.db import models
from django.urls import reverse

from studio.jobs.kinds import JOB_KINDS
from studio.storage.models import Deletable
from tuning.checkpoints import latest  # standard library only: no torch in the web process


def _now_order() -> float:
    return time.time()


def job_output_dir(job_id: int) -> Path:
    """Where a job writes its checkpoints and artifacts (under the shared MEDIA_ROOT)."""
    return Path(settings.MEDIA_ROOT) / "jobs" / str(job_id)


class Job(Deletable):
    class Kind(models.TextChoices):
        """Names of the built-in kinds, for code that refers to one; what a kind
        is and does is declared in ``studio.jobs.kinds`` (the field takes any
        registered kind)."""

        TRAIN = "train"
        MERGE = "merge"
        QUANTIZE = "quantize"
        EVALUATE = "evaluate"
        ANALYSE = "analyse"
        DIET = "diet"

    class Status(models.TextChoices):
        VALIDATING = "validating"
        QUEUED = "queued"
        RUNNING = "running"
        CANCELLING = "cancelling"
        PREEMPTING = "preempting"  # stopping at its next step to give its worker to a more urgent job
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class FailureKind(models.TextChoices):
        USER_ERROR = "user_error", "Problem with the settings or data"
        ERROR = "error", "Internal error"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
    HOLDING_WORKER = (Status.RUNNING, Status.CANCELLING, Status.PREEMPTING)

    team = models.ForeignKey("accounts.Team", on_delete=models.CASCADE, related_name="jobs")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="jobs")
    kind = models.CharField(max_length=20, default=Kind.TRAIN, db_index=True,
                            help_text="A name of studio.jobs.kinds.JOB_KINDS.")
    name = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.VALIDATING, db_index=True)
    dataset = models.ForeignKey("datasets.Dataset", on_delete=models.PROTECT, null=True, blank=True)
    base_model = models.ForeignKey("catalog.BaseModel", on_delete=models.PROTECT, null=True, blank=True)
    config = models.JSONField(help_text="Snapshot of the validated run configuration.")
    priority = models.IntegerField(default=0, help_text="Higher runs first; admins change it on the queue page.")
    # Within one priority, lower runs first; admins move jobs up and down.
    queue_order = models.FloatField(default=_now_order, db_index=True)
    device_pool = models.CharField(max_length=50, default="default")
    # Devices the job trains on together (a training job's ``devices`` setting; 1 for every other kind): one
    # worker with that many, or several workers of the pool joining one rendezvous (``JobHold``).
    devices = models.PositiveSmallIntegerField(default=1)
    failure_kind = models.CharField(max_length=12, choices=FailureKind.choices, blank=True)
    failure_message = models.TextField(blank=True)
    worker_name = models.CharField(max_length=200, blank=True)
    # A step of a chain (train → merge → quantize) waits for the step before
    # it: it is queued but sent to a worker only once that one succeeds.
    depends_on = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="dependents")
    # The artifacts a merge, quantize or evaluate job reads: they become the
    # parents of what it makes.
    input_artifact_ids = models.JSONField(default=list, blank=True)
    progress_phase = models.CharField(max_length=100, blank=True, help_text="What a non-training job is doing.")
    # The running worker renews this; a job whose heartbeat stops is taken
    # back and resumed elsewhere (see services.jobs_recover_lost).
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="How many times a worker has started this job.")
    # Denormalised from the latest metrics event, for lists and the progress bar.
    # Big integers: a download counts bytes.
    progress_step = models.PositiveBigIntegerField(default=0)
    progress_total = models.PositiveBigIntegerField(default=0)
    last_loss = models.FloatField(null=True, blank=True)
    last_seq = models.PositiveIntegerField(default=0, help_text="Seq of the newest event.")
    disk_bytes = models.PositiveBigIntegerField(default=0, help_text="Size of the job's directory (checkpoints and "
                                                                     "artifacts), measured when it ends.")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            # A pool's queue (the claims, the queue page's ranking) without visiting every queued job of the others.
            models.Index(fields=["device_pool", "status"], name="job_pool_status"),
            # Who has jobs queued or running where, and whether a pool's stored turns are current, read from
            # this index alone (selectors_queue.pools_at_work, queue_turns): never the wide rows.
            models.Index(fields=["status", "device_pool", "team", "owner", "deletion", "priority", "queue_order",
                                 "depends_on", "progress_total"], name="job_queue_cover"),
            # The job list: a team's live jobs, newest first, counted and paged from the index.
            models.Index(fields=["team", "deletion", "created_at"], name="job_team_list"),
        ]

    def __str__(self):
        return self.name or f"{self.kind} #{self.pk}"

    def get_absolute_url(self):
        return reverse("job-detail", args=[self.pk])

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def kind_label(self) -> str:
        kind = JOB_KINDS.get(self.kind)
        return kind.label if kind else self.kind

    @property
    def percent(self) -> int:
        return int(100 * self.progress_step / self.progress_total) if self.progress_total else 0

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint a stopped training job left behind."""
        if self.kind != self.Kind.TRAIN or self.status not in (self.Status.CANCELLED, self.Status.FAILED):
            return None
        return latest(job_output_dir(self.pk) / "checkpoints")

    @property
    def can_resume(self) -> bool:
        return self.latest_checkpoint() is not None

    def current_holds(self) -> list["JobHold"]:
        """The workers (and how many of their devices) the job's current attempt runs on: the claiming worker
        first, then those that joined it."""
        if self.status not in self.HOLDING_WORKER:
            return []
        return [hold for hold in self.holds.all() if hold.attempt == self.attempts]

    @property
    def can_cancel(self) -> bool:
        return self.status in (self.Status.VALIDATING, self.Status.QUEUED, self.Status.RUNNING,
                               self.Status.PREEMPTING)


class JobHold(models.Model):
    """A worker's devices taken by one attempt of a job. The worker that claimed the job is its head; a job
    asking for more devices than the head has also holds followers: other workers of the pool that joined the
    head's rendezvous (``services_queue.job_join_next``). Only the head records events and ends the job."""

    class Role(models.TextChoices):
        HEAD = "head"
        FOLLOWER = "follower"

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="holds")
    attempt = models.PositiveIntegerField(help_text="The job's attempts when it was taken.")
    worker_name = models.CharField(max_length=200)
    devices = models.PositiveSmallIntegerField(help_text="Devices of this worker the job trains on.")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.HEAD)
    # The head's: how many workers run the attempt, and the host:port of its torchrun rendezvous (c10d) that
    # the followers join ("" for a job of one worker).
    workers = models.PositiveSmallIntegerField(default=1)
    rendezvous = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "attempt", "pk"]
        constraints = [models.UniqueConstraint(fields=["job", "attempt", "worker_name"], name="one_hold_per_worker")]

    def __str__(self):
        return f"{self.worker_name}: {self.devices} device(s) of job #{self.job_id}"


class QueueTurn(models.Model):
    """A queued job's place in its pool's run order, as ``studio/jobs/queue_turns.py`` last ranked the pool
    (1 = first): claims take the first free row by turn and the queue page counts the rows ahead, instead of
    ranking the whole queue at each read. The copied fields are what the ranking read, so a job whose
    priority, place or owner changed, by a service or not, shows as out of step and the pool is ranked again.
    Rows of jobs that left the queue since stay until then; readers join on the job's status. No database
    foreign key: a Postgres key check would share-lock the job rows that claimers lock and skip."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, primary_key=True, related_name="queue_turn",
                               db_constraint=False)
    device_pool = models.CharField(max_length=50)
    turn = models.PositiveIntegerField()
    team_id = models.BigIntegerField()
    owner_id = models.BigIntegerField(null=True)
    priority = models.IntegerField()
    queue_order = models.FloatField()
    waiting = models.PositiveSmallIntegerField(help_text="1: a chain step whose step before has not succeeded.")
    progress_total = models.PositiveBigIntegerField()

    class Meta:
        indexes = [models.Index(fields=["device_pool", "turn"], name="turn_pool_turn"),
                   models.Index(fields=["device_pool", "team_id", "turn"], name="turn_pool_team_turn")]


class QueuePool(models.Model):
    """When a pool's turns were ranked, and against what: ``version`` counts the changes that alter usage (a
    job of the pool queued or ended through the state machine); turns are current while ``ranked_version``
    equals it, the fair-share settings are ``basis`` and ``ranked_at`` is recent."""

    pool = models.CharField(max_length=50, primary_key=True)
    version = models.PositiveBigIntegerField(default=0)
    ranked_version = models.PositiveBigIntegerField(default=0)
    basis = models.CharField(max_length=100, blank=True)
    ranked_at = models.DateTimeField(null=True)


class JobEvent(models.Model):
    """Everything a job reported, in order: ``seq`` is 1, 2, 3 … per job."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=20)
    data = models.JSONField()
    # Set on the events of steps after the checkpoint a lost worker's job
    # resumed from: the resumed run records those steps again, and every
    # reader shows each step once (the newer).
    superseded = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="one_event_per_seq")]

    def as_message(self) -> dict:
        return {"seq": self.seq, "kind": self.kind, "data": self.data}


class TeamQuota(models.Model):
    """Limits on a team's use of the workers; 0 means no limit. A job over a
    limit stays queued, and the queue page says why."""

    team = models.OneToOneField("accounts.Team", on_delete=models.CASCADE, related_name="quota")
    max_running_jobs = models.PositiveIntegerField(default=0, help_text="Jobs of the team running at once.")
    gpu_hours_per_month = models.FloatField(default=0, help_text="Hours of GPU-pool jobs per calendar month.")
    storage_gb = models.FloatField(default=0, help_text="Disk space for datasets, checkpoints and artifacts (GB); "
                                                        "uploads and new jobs are refused over it.")

    def __str__(self):
        return f"quota of {self.team}"


class MergeSearchCandidate(models.Model):
    """One candidate of a merge search (the ``merge_search`` kind): the coefficients the search proposed, the
    child jobs that merge and score it, and its score once read. Written in the same transaction as its
    child jobs, so a search taken back from a lost worker finds every candidate it started and starts none
    again (studio/jobs/services_search.py)."""

    search = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="search_candidates")
    index = models.PositiveIntegerField(help_text="0-based, in the order proposed.")
    generation = models.PositiveIntegerField()
    coefficients = models.JSONField(help_text="{coefficient: value}, e.g. {\"weight.0\": 0.7}.")
    recipe = models.JSONField(help_text="What the candidate merges: method, a weight per source, settings.")
    merge_job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, related_name="+")
    evaluate_job = models.ForeignKey(Job, on_delete=models.SET_NULL, null=True, related_name="+")
    score = models.FloatField(null=True, blank=True)
    # "" while its jobs run; then "scored", or "failed" with the reason in ``message``.
    outcome = models.CharField(max_length=10, blank=True)
    message = models.TextField(blank=True)
    reported = models.BooleanField(default=False, help_text="Its candidate event is in the search's events.")
    weights_deleted = models.BooleanField(default=False, help_text="Not the best: its merged model was deleted.")

    class Meta:
        ordering = ["search", "index"]
        constraints = [models.UniqueConstraint(fields=["search", "index"], name="one_candidate_per_index")]

    def __str__(self):
        return f"candidate {self.index} of job #{self.search_id}"
