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
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings

from studio.jobs.models import Job, JobHold
from tuning.distributed import die_with_parent
from worker.devices import worker_address

STOP_POLL_S = 1.0  # how often a follower asks whether the job's attempt still runs


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
    """torchrun for this worker's ``devices`` processes of the attempt that ``head`` leads."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={head.workers}",
            f"--nproc-per-node={devices}", "--rdzv-backend=c10d", f"--rdzv-endpoint={head.rendezvous}",
            f"--rdzv-id=job-{head.job_id}-{head.attempt}",
            f"--rdzv-conf=is_host={'true' if is_host else 'false'},join_timeout={settings.RENDEZVOUS_TIMEOUT_S}",
            f"--local-addr={worker_address()}", "--max-restarts=1",
            "-m", "tuning.distributed", str(config_file), str(events), str(stop_file)]


def head_launch(job: Job):
    """The head's launch (for ``distributed_runs.train_on_ranks``) when its attempt runs on several workers,
    else None (every rank on this machine)."""
    head = JobHold.objects.filter(job=job, attempt=job.attempts, role=JobHold.Role.HEAD).first()
    if head is None or head.workers < 2:
        return None
    return lambda config_file, events, stop_file: rendezvous_command(
        head=head, devices=head.devices, is_host=True, config_file=config_file, events=events, stop_file=stop_file)


def _attempt_runs(hold: JobHold) -> bool:
    return Job.objects.filter(pk=hold.job_id, status__in=Job.HOLDING_WORKER, attempts=hold.attempt).exists()


def follow(seat) -> str:
    """Run this worker's processes of the job ``seat`` (a ``services_queue.Seat``) joined, until they end or
    the attempt is over (ended, cancelled, taken back after its head was lost)."""
    run_dir = Path(seat.job.config["output_dir"]) / "ranks"
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / f"config-{seat.hold.pk}.json"
    config_file.write_text(json.dumps(seat.job.config))
    command = rendezvous_command(head=seat.head, devices=seat.hold.devices, is_host=False, config_file=config_file,
                                 events=run_dir / "events.jsonl", stop_file=run_dir / "stop")
    with open(run_dir / f"follower-{seat.hold.pk}.log", "ab") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        while proc.poll() is None:
            time.sleep(STOP_POLL_S)
            if not _attempt_runs(seat.hold):
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return "followed"
