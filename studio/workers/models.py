"""The Celery worker processes that run jobs, as they report themselves
(see worker/registry.py): one row per worker node name."""

from django.db import models


class WorkerNode(models.Model):
    class State(models.TextChoices):
        ALIVE = "alive"
        LOST = "lost"  # no heartbeat for JOB_LOST_AFTER_S: killed, hung or cut off
        STOPPED = "stopped"  # said goodbye on a clean shutdown

    # Celery's node name, e.g. "gpu0@box-1": unique per running worker.
    name = models.CharField(max_length=200, unique=True)
    pool = models.CharField(max_length=200, help_text="The device pool (Celery queue) it consumes.")
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    device = models.CharField(max_length=255, help_text='e.g. "CUDA: NVIDIA H100 80GB HBM3" or "CPU: 2 cores, …"')
    # What a job of the pool can use here: the worker's visible GPUs (or WORKER_DEVICES), 1 for a CPU worker
    # unless WORKER_DEVICES says how many training processes it may run. A pool's capacity is their sum.
    device_count = models.PositiveSmallIntegerField(default=1)
    device_kind = models.CharField(max_length=10, default="cpu", help_text='"cuda" or "cpu"')
    # MiB per device; GPU memory for a CUDA worker, the machine's RAM for a CPU worker.
    device_memory_mib = models.PositiveIntegerField(default=0)
    # Where the other workers of its pool reach this one for a job's rendezvous (WORKER_ADDRESS, else hostname).
    address = models.CharField(max_length=255, blank=True)
    # MiB; the worker process's resident set size at the last heartbeat.
    memory_used_mib = models.PositiveIntegerField(default=0)
    current_job = models.ForeignKey("jobs.Job", on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="+")
    started_at = models.DateTimeField()
    last_heartbeat_at = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["pool", "name"]

    def __str__(self):
        return self.name
