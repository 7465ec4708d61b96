"""A training job on several devices of this machine (``devices`` > 1).

The worker launches the ranks with torchrun (``tuning.distributed``) and
stays the job's one writer: it reads the events rank 0 appends to a file
into the job's sink (stored and pushed live like any run's), turns a cancel
into the stop file the ranks look for after every step, and, when torchrun
restarted the group after a rank died, supersedes what the lost attempt
reported after the checkpoint the group resumed from, so each step shows
once. The ranks never touch the database.

A job on several workers (``gang``, worker/gang_runs.py) is not restarted
in place: its group stops as soon as a rank or a whole worker is lost, and
``GroupLost`` tells the runner to put the job back in the queue, to resume
from its last checkpoint on the next claim.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from studio.jobs.models import Job
from studio.jobs.services import job_redo_steps_after
from tuning.config import TrainConfig, config_to_dict
from tuning.distributed import die_with_parent, launch_command
from tuning.errors import TuningError
from tuning.events import event_from_dict

logger = logging.getLogger(__name__)
POLL_S = 0.2  # how often the events file is read
STOP_POLL_S = 1.0  # how often the job's cancel flag is read from the database
LOG_TAIL_CHARS = 2000  # of the ranks' output, in the job's failure message


class GroupLost(Exception):
    """The ranks of a job on several workers stopped because one of them, or a whole worker, was lost: the job
    goes back to the queue (``services.job_requeue_lost_group``) rather than failing."""


@dataclass
class RanksResult:
    status: str  # "succeeded" or "cancelled"
    steps: int
    final_loss: float | None


class EventsFile:
    """Reads the lines rank 0 appended since the last read (a line is counted once it is whole)."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new_lines(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        whole = chunk[:chunk.rfind(b"\n") + 1]
        self.offset += len(whole)
        return [json.loads(line) for line in whole.splitlines() if line.strip()]


def train_on_ranks(job: Job, sink, config: TrainConfig, *, gang=None) -> RanksResult:
    """Every rank on this machine, or with ``gang`` (a job on several workers, ``gang_runs.HeadLaunch``) this
    worker's share of a group joined through its rendezvous: ``gang.command(config_file, events, stop_file)``
    is this worker's torchrun command, ``gang.lost_follower()`` names a follower whose worker stopped
    reporting ("" while all do). Raises GroupLost when such a group stops without its ranks' outcome."""
    run_dir = Path(config.output_dir) / "ranks"
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file, events, stop_file, log = (run_dir / name for name in
                                           ("config.json", "events.jsonl", "stop", "ranks.log"))
    for stale in (events, stop_file):  # a launch of an earlier claim of this job
        stale.unlink(missing_ok=True)
    config_file.write_text(json.dumps(config_to_dict(config)))
    with open(log, "ab") as output:
        command = (gang.command(config_file, events, stop_file) if gang else
                   launch_command(devices=config.devices, config_file=config_file, events=events, stop_file=stop_file))
        proc = subprocess.Popen(command,
                                stdout=output, stderr=subprocess.STDOUT,
                                # torchrun dies with this worker: a job taken back is never trained twice
                                preexec_fn=die_with_parent)
    reader, outcome, last_stop_check, lost = EventsFile(events), {}, 0.0, ""
    try:
        while True:
            done = proc.poll() is not None
            for line in reader.new_lines():
                if "resumed_after_step" in line:
                    job_redo_steps_after(job_id=job.pk, step=line["resumed_after_step"])
                elif "ended" in line or "failed" in line:
                    outcome = line
                else:
                    sink.emit(event_from_dict(line["kind"], line["data"]))
            if done:
                break
            if time.monotonic() - last_stop_check > STOP_POLL_S:
                last_stop_check = time.monotonic()
                if not stop_file.exists() and sink.should_stop():
                    stop_file.touch()
                # A follower cut off without closing its connections (a machine hung or unplugged) would leave
                # this group's collectives waiting; its worker's heartbeat tells.
                lost = gang.lost_follower() if gang else ""
                if lost:
                    break
            time.sleep(POLL_S)
    finally:
        if proc.poll() is None:  # a follower was lost, or this worker is stopping: the ranks stop with it
            proc.kill()
            proc.wait()
    if "failed" in outcome:
        raise TuningError(outcome["failed"])
    if gang and "ended" not in outcome:
        logger.warning("job %s: its group on %d workers stopped; the ranks' output ends:\n%s", job.pk, gang.workers,
                       log.read_text(errors="replace")[-LOG_TAIL_CHARS:])
        raise GroupLost(f"Worker {lost} stopped reporting" if lost else
                        f"A process of the group on {gang.workers} workers stopped (torchrun exit {proc.returncode})")
    # On several workers rank 0's end mark is enough: the output is written, whatever a peer did as it closed.
    if "ended" not in outcome or (proc.returncode != 0 and not gang):
        tail = log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        raise RuntimeError(f"the {config.devices} training processes failed (torchrun exit {proc.returncode}): "
                           f"{tail}")
    return RanksResult(status=outcome["ended"], steps=outcome["steps"], final_loss=outcome["final_loss"])
