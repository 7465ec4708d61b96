"""A training job on several workers of a pool: a job asking for more
devices than the worker that claims it has. That worker is the job's head
(``services_queue.job_claim_next`` recorded how many workers it needs and
where its rendezvous is); idle workers of the pool woken for it take the
followers' seats (``services_queue.job_join_next``). Every worker starts
torchrun with the same rendezvous (c10d backend, ``--nnodes`` the number of
workers, the endpoint on the head's machine, an id per attempt of the job),
each with as many processes as it brings devices; torch.distributed then
runs one group over the machines, as over the devices of one.

The head stays the job's one writer (worker/distributed_runs.py: it reads
rank 0's events file, turns a cancel into the stop file, ends the job). A
follower only keeps its processes running, and stops them when the job's
attempt is over: the files are on the shared MEDIA_ROOT, so wherever rank
0 lands its events reach the head.

A lost member stops the whole group at once (no restart in place, see
``rendezvous_command``), and the head puts the job back in the queue at its
place, to resume from its last checkpoint on the next claim: a killed
worker's connections close, so the others' collectives fail within a step;
a follower that hung or dropped off the network is found by its worker's
heartbeat (``HeadLaunch.lost_follower``). A lost head's job is taken back
by the heartbeat of the job itself, as any job's.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from studio.jobs.models import Job, JobHold
from studio.workers.models import WorkerNode
from studio.workers.selectors import workers_lost
from tuning.distributed import die_with_parent
from worker.devices import worker_address

log = logging.getLogger(__name__)
STOP_POLL_S = 1.0  # how often a follower asks whether the job's attempt still runs
LEAVE_GRACE_S = 5.0  # how long a follower's ranks may take to end once the attempt is over


def free_port() -> int:
    """The first port of RENDEZVOUS_PORT … + RENDEZVOUS_PORTS free on this machine (the range a team opens
    between its pool's machines)."""
    for port in range(settings.RENDEZVOUS_PORT, settings.RENDEZVOUS_PORT + settings.RENDEZVOUS_PORTS):
        with socket.socket() as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
            return port
    last = settings.RENDEZVOUS_PORT + settings.RENDEZVOUS_PORTS - 1
    raise RuntimeError(f"no free rendezvous port in {settings.RENDEZVOUS_PORT}…{last} (RENDEZVOUS_PORT, "
                       f"RENDEZVOUS_PORTS)")


def rendezvous_address() -> str:
    """host:port where this worker would host the rendezvous of a job it heads."""
    return f"{worker_address()}:{free_port()}"


def rendezvous_command(*, head: JobHold, devices: int, is_host: bool, config_file: Path, events: Path,
                       stop_file: Path) -> list[str]:
    """torchrun for this worker's ``devices`` processes of the attempt that ``head`` leads.

    No restart in place (``--max-restarts=0``): after a rank died, a restarted group would wait up to
    RENDEZVOUS_TIMEOUT_S for every worker to join again, and a lost worker never would. Instead a rank lost
    anywhere ends every worker's torchrun at once (the others' collectives fail on the closed connections,
    and an agent whose processes failed stops them and exits non-zero), and the head puts the job back in
    the queue to resume from its last checkpoint (``distributed_runs.GroupLost``)."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={head.workers}",
            f"--nproc-per-node={devices}", "--rdzv-backend=c10d", f"--rdzv-endpoint={head.rendezvous}",
            f"--rdzv-id=job-{head.job_id}-{head.attempt}",
            f"--rdzv-conf=is_host={'true' if is_host else 'false'},join_timeout={settings.RENDEZVOUS_TIMEOUT_S}",
            f"--local-addr={worker_address()}", "--max-restarts=0",
            "-m", "tuning.distributed", str(config_file), str(events), str(stop_file)]


@dataclass(frozen=True)
class HeadLaunch:
    """The head's side of an attempt on several workers, for ``distributed_runs.train_on_ranks``."""

    head: JobHold

    @property
    def workers(self) -> int:
        return self.head.workers

    def command(self, config_file: Path, events: Path, stop_file: Path) -> list[str]:
        return rendezvous_command(head=self.head, devices=self.head.devices, is_host=True, config_file=config_file,
                                  events=events, stop_file=stop_file)

    def lost_follower(self) -> str:
        """The name of a follower of this attempt whose worker stopped (its registry heartbeat is
        JOB_LOST_AFTER_S old, or it shut down), or "". A killed worker's connections close and its group
        stops by itself; this catches the one whose machine hung or dropped off the network."""
        followers = JobHold.objects.filter(job_id=self.head.job_id, attempt=self.head.attempt,
                                           role=JobHold.Role.FOLLOWER).values_list("worker_name", flat=True)
        gone = (workers_lost() | WorkerNode.objects.filter(stopped_at__isnull=False)).filter(name__in=followers)
        return gone.values_list("name", flat=True).first() or ""


def head_launch(job: Job) -> HeadLaunch | None:
    """The head's launch (for ``distributed_runs.train_on_ranks``) when its attempt runs on several workers,
    else None (every rank on this machine)."""
    head = JobHold.objects.filter(job=job, attempt=job.attempts, role=JobHold.Role.HEAD).first()
    return HeadLaunch(head) if head is not None and head.workers >= 2 else None


def _attempt_runs(hold: JobHold) -> bool:
    return Job.objects.filter(pk=hold.job_id, status__in=Job.HOLDING_WORKER, attempts=hold.attempt).exists()


def follow(seat) -> str:
    """Run this worker's processes of the job ``seat`` (a ``services_queue.Seat``) joined, until they end or
    the attempt is over (ended, cancelled, taken back after its head or another follower was lost). Returns
    how: "followed" (the ranks ended with the run), "left" (stopped here, the attempt being over) or "group
    lost" (they failed: a member of the group was lost)."""
    run_dir = Path(seat.job.config["output_dir"]) / "ranks"
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / f"config-{seat.hold.pk}.json"
    config_file.write_text(json.dumps(seat.job.config))
    command = rendezvous_command(head=seat.head, devices=seat.hold.devices, is_host=False, config_file=config_file,
                                 events=run_dir / "events.jsonl", stop_file=run_dir / "stop")
    with open(run_dir / f"follower-{seat.hold.pk}.log", "ab") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    left = False
    try:
        while proc.poll() is None:
            time.sleep(STOP_POLL_S)
            if not _attempt_runs(seat.hold):
                left = True
                break
    finally:
        try:  # ranks ending with the run close the group as it ends: let them
            proc.wait(timeout=LEAVE_GRACE_S if left else 0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.returncode == 0:
        return "followed"  # this worker's ranks ended with the run (finished or stopped at the group's step)
    if left:
        return "left"  # the attempt ended (or was taken back) before this worker's ranks did
    log.warning("job %s: this follower's ranks failed (torchrun exit %s); its head takes the job back",
                seat.job.pk, proc.returncode)
    return "group lost"
