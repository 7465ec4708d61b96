"""What a process of a run over several devices (a rank) does differently
from a one-process run. ``tuning.train`` asks ``Ranks`` at each of these
points; a one-process run is ``SINGLE``, for which each is a no-op.
``tuning.distributed`` starts the ranks (torchrun) and runs each.

- **Data.** Every rank walks the same seeded global batches; each
  micro-batch is split into one contiguous shard per rank. A global batch
  is therefore the same rows in the same order whatever the device count.
- **Gradients.** Each rank's loss is weighted by its share of the
  micro-batch's loss-bearing tokens, and after the backward passes the
  gradients are averaged over the ranks in one flat all-reduce (what
  DistributedDataParallel does, bucket by bucket). The step is then the
  step of one process on the whole global batch, up to float rounding: the
  same loss, the same weights on every rank. (The fused loss calls the
  decoder inside the model rather than the model's forward, which is where
  DDP's wrapper hooks in; averaging the gradients ourselves works for every
  loss function and method alike.)
- **Sharding.** Under FSDP2 (``sharded``, ``tuning.sharding``) each rank
  holds a slice of every weight and the backward pass itself averages and
  scatters the gradients; the loss weights above are unchanged, every rank
  writes its slice of each checkpoint, and every rank runs each forward
  (evaluation, the golden prompts) since each gathers weights from all.
- **Writing.** Rank 0 alone emits events, writes checkpoints, the output
  and its model card; the others wait for it at each checkpoint.
- **Stopping.** Rank 0 asks the sink whether to stop after each step and
  broadcasts the answer, so every rank stops at the same step and the
  cancel checkpoint is whole.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from tuning.errors import ConfigError
from tuning.events import Event, EventSink

IGNORE_INDEX = -100  # tuning.data.sft's label for tokens that carry no loss
TASKS = ("sft", "pretrain")  # tasks whose loss is a mean over tokens, so that shards weigh by their tokens


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    device: str = "cpu"  # where collectives' tensors live: NCCL takes CUDA tensors only
    sharded: bool = False  # FSDP2: each rank holds a slice of the model (tuning.sharding)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, rows: list) -> list:
        """This rank's contiguous part of a micro-batch (sizes differ by one at most)."""
        if not self.active:
            return rows
        base, extra = divmod(len(rows), self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return rows[start:start + base + (self.rank < extra)]

    def all_sum(self, value):
        """The sum over the ranks of a number or a one-element tensor: an int for an int, else a float
        (every rank sends the same type, whatever it holds)."""
        if not self.active:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return int(round(tensor.item())) if isinstance(value, int) else tensor.item()

    def loss_share(self, inputs: dict | None) -> tuple[float, float]:
        """(weight of this rank's mean loss in the backward pass, weight in the reported loss) for one
        micro-batch: its loss-bearing tokens over the micro-batch's, times the rank count in the first
        (the gradient average divides by it again)."""
        if not self.active:
            return 1.0, 1.0
        mine = 0 if inputs is None else int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
        total = self.all_sum(mine)
        share = mine / total if total else 0.0
        return share * self.world_size, share

    def average_gradients(self, parameters: list) -> None:
        """What DDP does: every rank's gradients replaced by their mean over the ranks (one flat all-reduce).
        Under FSDP2 the backward pass did it already (reduce-scatter)."""
        if not self.active or self.sharded:
            return
        import torch
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for parameter, grad in zip(parameters, grads):
            parameter.grad = flat[offset:offset + grad.numel()].view_as(grad).clone()
            offset += grad.numel()

    def broadcast_parameters(self, parameters: list) -> None:
        """Rank 0's values in every rank (as DDP does when it wraps a model): one starting point for all."""
        if not self.active:
            return
        import torch.distributed as dist

        for parameter in parameters:
            dist.broadcast(parameter.data, src=0)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (it fills a cache the others then read), then the others."""
        if self.is_main:
            yield
            self.barrier()
        else:
            self.barrier()
            yield


SINGLE = Ranks()


class RankSink:
    """The run's sink as every rank sees it: events go through on rank 0
    only, and the stop answer is rank 0's, the same on every rank."""

    def __init__(self, sink: EventSink, ranks: Ranks):
        self.sink, self.ranks = sink, ranks

    def emit(self, event: Event) -> None:
        if self.ranks.is_main:
            self.sink.emit(event)

    def should_stop(self) -> bool:
        stop = self.sink.should_stop() if self.ranks.is_main else False
        if not self.ranks.active:
            return stop
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if stop else 0], device=self.ranks.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())


def check_distributed(config, method) -> None:
    """Refuse, naming the field, what a run over several devices cannot do yet."""
    if config.devices <= 1:
        return
    problems = {}
    if config.task not in TASKS:
        problems["devices"] = (f"training on {config.devices} devices supports the tasks {', '.join(TASKS)}; "
                               f"use 1 device for the {config.task} task")
    elif method.on_step or method.grow or method.penalty:
        problems["devices"] = (f"{method.label} changes the model between steps on each process; "
                               f"train it on 1 device")
    elif config.batch_size < config.devices:
        problems["batch_size"] = (f"the batch of {config.batch_size} rows is split across {config.devices} devices; "
                                  f"give each device at least one row (batch size ≥ {config.devices})")
    if problems:
        raise ConfigError(problems)
