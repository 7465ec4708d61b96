"""What the training loop (``tuning.train``) carries from step to step: the
model, optimizer, scheduler and counters of one run, started fresh or
resumed from a checkpoint, and the three things the loop does between
steps: save a checkpoint, evaluate, answer the golden prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning import checkpoints
from tuning.config import TrainConfig
from tuning.ranks import SINGLE, Ranks
from tuning.sharding import shard_model
from tuning.errors import ConfigError
from tuning.evaluate import evaluate
from tuning.events import EvalEvent, EventSink, LogEvent, SamplesEvent
from tuning.methods import Method
from tuning.methods.base import CLASSIFIER_TASKS
from tuning.optimizers import build_optimizer
from tuning.preference import evaluate_pairs
from tuning.train_model import Device, PreparedModel


@dataclass
class TrainData:
    tokenizer: Any
    data: Any  # the task's tokenized data (items, label2id, counts of dropped and truncated rows)
    train_items: list
    validation_items: list
    collate: Any  # rows -> padded tensors (evaluation, calibration)
    rows_per_step: int
    steps_per_epoch: int
    total_steps: int


@dataclass
class Run:
    config: TrainConfig
    sink: EventSink
    method: Method
    params: Any
    device: Device
    output_dir: Path
    data: TrainData
    prepared: PreparedModel
    optimizer: Any
    scheduler: Any
    state: checkpoints.TrainerState
    ranks: Ranks = SINGLE  # a run over several devices: rank 0 alone writes checkpoints

    @property
    def model(self):
        return self.prepared.model

    def save_checkpoint(self, name: str) -> Path:
        path = self.output_dir / "checkpoints" / name
        if self.ranks.sharded:  # every rank writes its slices
            checkpoints.save_sharded_checkpoint(path, model=self.model, optimizer=self.optimizer,
                                                scheduler=self.scheduler, state=self.state, ranks=self.ranks)
            if self.ranks.is_main:
                checkpoints.rotate(self.output_dir / "checkpoints", self.config.keep_checkpoints)
            return path
        if self.ranks.is_main:  # every rank holds the same weights and optimizer state
            checkpoints.save_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                                        state=self.state, training_state=self.method.training_state)
            checkpoints.rotate(self.output_dir / "checkpoints", self.config.keep_checkpoints)
        self.ranks.barrier()  # no rank goes on before the checkpoint is whole
        return path

    def evaluate(self) -> dict:
        """Evaluate on the validation rows; the best result so far is kept as the "best" checkpoint."""
        config, state, items = self.config, self.state, self.data.validation_items
        in_order = (items[i:i + config.batch_size] for i in range(0, len(items), config.batch_size))
        batches = (self.data.collate(b) for b in in_order)
        if self.prepared.objective is not None:  # preference pairs: loss, reward accuracy and margin
            result = evaluate_pairs(self.prepared.objective, batches, device=self.device.name,
                                    autocast=self.device.autocast)
        else:
            result = evaluate(self.model, batches, device=self.device.name, autocast=self.device.autocast,
                              task=config.task)
        improved = state.best_eval_loss is None or result["eval_loss"] < state.best_eval_loss
        if improved:
            state.best_eval_loss, state.best_step, state.evals_without_improvement = result["eval_loss"], state.step, 0
            self.save_checkpoint("best")
        else:
            state.evals_without_improvement += 1
        self.sink.emit(EvalEvent(step=state.step, best=improved, **result))
        return result

    def answer_golden_prompts(self) -> None:
        """Greedy answers to the golden prompts with the weights as they are now."""
        config = self.config
        if not config.golden_prompts or config.task in CLASSIFIER_TASKS:
            return
        if not (self.ranks.is_main or self.ranks.sharded):  # a sharded model answers with every rank
            return
        from tuning.generate import generate_text

        self.model.eval()
        with self.device.autocast():
            samples = [{"prompt": prompt, "answer": generate_text(self.model, self.data.tokenizer, prompt,
                                                                  max_new_tokens=config.golden_max_new_tokens)}
                       for prompt in config.golden_prompts]
        self.model.train()
        self.sink.emit(SamplesEvent(step=self.state.step, samples=samples))


def start_run(config: TrainConfig, sink: EventSink, *, method: Method, params, device: Device, output_dir: Path,
              data: TrainData, prepared: PreparedModel, ranks: Ranks = SINGLE) -> Run:
    """The optimizer and schedule for the prepared model, resumed from
    ``config.resume_from`` where it names a checkpoint."""
    from transformers import get_scheduler

    if ranks.sharded:  # before the optimizer: sharding replaces the parameters with their slices
        prepared = shard_prepared(prepared, ranks, sink)
    groups = (method.param_groups(prepared.model, params, config.learning_rate) if method.param_groups
              else [{"params": prepared.trainable}])
    optimizer = build_optimizer(groups, config, prepared.model)
    scheduler = get_scheduler("constant_with_warmup" if config.scheduler == "constant" else config.scheduler,
                              optimizer, num_warmup_steps=int(config.warmup_ratio * data.total_steps),
                              num_training_steps=data.total_steps)
    state = checkpoints.TrainerState()
    resume = _resume_dir(config, output_dir)
    if resume is not None and not method.resumable:
        raise ConfigError({"resume_from": f"{method.label} runs cannot be resumed from a checkpoint (its training "
                                          f"state is not all in the weights); start a new run"})
    if resume is not None:
        state = checkpoints.load_checkpoint(resume, model=prepared.model, optimizer=optimizer, scheduler=scheduler,
                                            restore_training_state=method.restore_training_state)
        sink.emit(LogEvent(message=f"Resumed from {resume.name} at step {state.step}"))
    if not ranks.sharded:
        ranks.broadcast_parameters(prepared.trainable)  # one starting point on every rank, as DDP makes it
    sink.emit(LogEvent(message=f"Training {data.total_steps} steps of {data.rows_per_step} rows "
                               f"({data.steps_per_epoch} steps per epoch)"))
    return Run(config=config, sink=sink, method=method, params=params, device=device, output_dir=output_dir,
               data=data, prepared=prepared, optimizer=optimizer, scheduler=scheduler, state=state, ranks=ranks)


def shard_prepared(prepared: PreparedModel, ranks: Ranks, sink: EventSink) -> PreparedModel:
    """The prepared model under FSDP2 (``tuning.sharding``), its trainable parameters now the slices."""
    from dataclasses import replace

    ranks.broadcast_parameters(list(prepared.model.parameters()))  # one starting point: each rank keeps its slice
    blocks = shard_model(prepared.model)
    sink.emit(LogEvent(message=f"Fully sharded (FSDP2) over {ranks.world_size} devices: {blocks} decoder blocks "
                               f"and the rest, each device holding 1/{ranks.world_size} of the weights, gradients "
                               f"and optimizer state"))
    return replace(prepared, trainable=[p for p in prepared.model.parameters() if p.requires_grad])


def _resume_dir(config: TrainConfig, output_dir: Path) -> Path | None:
    if not config.resume_from:
        return None
    found = (checkpoints.latest(output_dir / "checkpoints") if config.resume_from == "latest"
             else Path(config.resume_from))
    if config.resume_from != "latest" and not (found / checkpoints.STATE_FILE).exists():
        raise ConfigError({"resume_from": f"{found} is not a checkpoint directory"})
    return found
