"""One training run over several processes (ranks), with PyTorch's own
distributed runtime: ``torchrun`` starts the ranks and restarts the group
when one dies (torch.distributed.elastic), ``torch.distributed`` carries
the collectives (gloo on CPUs, NCCL on GPUs). What each rank does
differently from a one-process run is ``tuning.ranks``.

Entry point of a rank, as the worker launches it (``launch_command``)::

    torchrun --standalone --nproc-per-node N --max-restarts 1 \\
        -m tuning.distributed CONFIG.json EVENTS.jsonl STOP_FILE

Rank 0 appends each event as a JSON line to EVENTS.jsonl (the worker reads
them into its own sink); STOP_FILE appearing asks the run to stop. After a
rank died, torchrun restarts the whole group and the new ranks resume from
the last checkpoint; rank 0 first writes ``{"resumed_after_step": N}`` so
the reader can drop what the lost attempt reported after step N, and at
the end ``{"ended": STATUS, "steps", "final_loss"}`` (or ``{"failed":
MESSAGE}`` for an error the user can fix). A group over several machines
is launched without restarts instead: the whole job goes back to the
studio's queue when one of them is lost (worker/gang_runs.py).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from tuning.events import StdoutSink
from tuning.ranks import SINGLE, RankSink, Ranks


class FileSink(StdoutSink):
    """Rank 0's sink under a worker: events appended as JSON lines to a
    file the worker reads; a stop file asks the run to stop."""

    def __init__(self, events: Path, stop_file: Path):
        super().__init__(stream=open(events, "a", buffering=1))
        self.stop_file = stop_file

    def mark(self, **fields) -> None:
        """A line that is not an event: the group resumed, the run ended, or failed with a user's error."""
        print(json.dumps(fields), file=self.stream, flush=True)

    def should_stop(self) -> bool:
        return self.stop_file.exists()


def ranks_from_env() -> Ranks:
    """The ranks torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK), with the process group started."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" then means this rank's device
    if not dist.is_initialized():
        rank, restart = int(os.environ["RANK"]), int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        # The store torchrun's agent serves outlives a restart of the group, and with it the addresses the
        # dead group's ranks published there: a restarted rank read its peer's old port and was refused
        # (seen on a CPU). Each restart gets keys of its own.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                              is_master=os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and rank == 0,
                              timeout=timedelta(minutes=10))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo",
                                store=dist.PrefixStore(f"restart-{restart}", store), rank=rank, world_size=world_size,
                                timeout=timedelta(minutes=10))
    return Ranks(rank=dist.get_rank(), world_size=dist.get_world_size(),
                 device="cuda" if torch.cuda.is_available() else "cpu")


def launch_command(*, devices: int, config_file: Path, events: Path, stop_file: Path,
                   max_restarts: int = 1) -> list[str]:
    """The torchrun command that runs one job on ``devices`` processes of this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
            f"--max-restarts={max_restarts}", "-m", "tuning.distributed",
            str(config_file), str(events), str(stop_file)]


def die_with_parent() -> None:
    """Linux: this process is killed when the one that started it dies (the worker that launched torchrun,
    or torchrun that launched this rank), so that no rank trains on after its job was taken back."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the worker's heartbeat still tells a lost job from a running one


def main(argv: list[str]) -> int:
    from tuning import checkpoints
    from tuning.config import TrainConfig
    from tuning.errors import TuningError
    from tuning.events import LogEvent
    from tuning.train import run_train

    die_with_parent()
    config_file, events, stop_file = (Path(arg) for arg in argv)
    config = TrainConfig.from_dict(json.loads(config_file.read_text()))
    ranks = ranks_from_env()
    file_sink = FileSink(events, stop_file) if ranks.is_main else None
    sink = RankSink(file_sink or StdoutSink(stream=open(os.devnull, "w")), ranks)
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        # A rank died and torchrun restarted the group: go on from the last checkpoint, if one was written.
        last = checkpoints.latest(Path(config.output_dir) / "checkpoints")
        step = checkpoints.checkpoint_step(last) if last else 0
        config = replace(config, resume_from=str(last) if last else "")
        if file_sink is not None:
            file_sink.mark(resumed_after_step=step)
        sink.emit(LogEvent(message=f"A process of the group stopped; all {ranks.world_size} restarted, "
                                   f"resuming from {'step ' + str(step) if last else 'the start'}"))
    try:
        result = run_train(config, sink, ranks=ranks)
    except TuningError as exc:  # the user's to fix: the worker fails the job with this message
        if file_sink is not None:
            file_sink.mark(failed=str(exc))
        return 3
    finally:
        if ranks.active:
            import torch.distributed as dist

            dist.destroy_process_group()
    if file_sink is not None:
        file_sink.mark(ended=result.status, steps=result.steps, final_loss=result.final_loss)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
