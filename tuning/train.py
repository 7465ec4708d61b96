"""The training loop, top to bottom.

``run_train(config, sink)`` is the one entry point, called by the CLI and
by the worker alike. It reports everything through ``sink`` and checks
``sink.should_stop()`` after every optimizer step, so a cancel takes
effect within one step and leaves a checkpoint behind. A run continues
exactly from a checkpoint (weights, optimizer, scheduler, data position)
when ``resume_from`` names one.

Tokenized data comes from an on-disk cache when the same file was
tokenized the same way before (``tuning.data.cache``), and each
micro-batch is packed without padding where the method and model allow it
(``tuning.data.packing``); either way the rows of every step depend only on
(seed, epoch), which is what makes resuming exact.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning import checkpoints
from tuning.config import TrainConfig, check_against_model
from tuning.data.cache import default_cache_dir, load_task_data_cached
from tuning.data.chat_templates import use_chat_template
from tuning.data.system_prompts import use_system_prompt
from tuning.data.splits import split_validation
from tuning.data.stats import sink_progress
from tuning.data.tasks import batches, collate_for_task
from tuning.errors import ConfigError, DatasetError, ResourceError
from tuning.ranks import SINGLE, Ranks, check_distributed
from tuning.sharding import full_weights, shards_states, unsharded_copy
from tuning.events import ArtifactEvent, CheckpointEvent, EventSink, LogEvent, MetricsEvent
from tuning.methods import METHODS
from tuning.modelcard import loss_text, write_model_card
from tuning.models import load_tokenizer
from tuning.preference_kto import items_for_loss
from tuning.train_model import device_and_autocast, memory_mib, prepare_model
from tuning.train_run import Run, TrainData, start_run


@dataclass
class TrainResult:
    status: str  # "succeeded" or "cancelled"
    steps: int
    final_loss: float | None
    output_path: str  # the output directory, or the last checkpoint when cancelled
    trainable_parameters: int
    eval: dict | None = None  # the last evaluation
    model: Any = None  # the trained model, for in-process callers (tests, evaluation)


@dataclass
class LoopOutcome:
    started: float = field(default_factory=time.monotonic)  # when the loop began (time.monotonic)
    final_loss: float | None = None
    last_eval: dict | None = None
    stopped_early: bool = False
    cancelled_at: Path | None = None  # the checkpoint written when a cancel arrived


def run_train(config: TrainConfig, sink: EventSink, *, ranks: Ranks = SINGLE) -> TrainResult:
    """``ranks``: this process's place in a run over several devices (``tuning.ranks``: each rank
    trains on its shard of every batch, rank 0 alone reports and writes); one process by default."""
    import torch

    # --- set up -----------------------------------------------------------
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    method = METHODS[config.method]
    params = method.params(**config.method_params)
    check_against_model(config)
    check_distributed(config, method)
    if ranks.active and shards_states(config.sharding, devices=config.devices, method=method):
        ranks = replace(ranks, sharded=True)  # FSDP2: each rank holds a slice of the model (tuning.sharding)
    device = device_and_autocast(config.precision)
    torch.manual_seed(config.seed)

    with ranks.main_first():  # rank 0 fills the token cache, the others read it
        data = load_data(config, sink, output_dir)
    prepared = prepare_model(config, sink, method=method, params=params, device=device, tokenizer=data.tokenizer,
                             data=data.data, train_items=data.train_items, collate=data.collate,
                             total_steps=data.total_steps, sharded=ranks.sharded)
    if (config.task == "preference" and prepared.objective.settings.needs_reference
            and config.reference == "precomputed"):
        data = with_reference_logps(data, prepared, device, sink, batch_size=config.batch_size)
    run = start_run(config, sink, method=method, params=params, device=device, output_dir=output_dir, data=data,
                    prepared=prepared, ranks=ranks)
    outcome = train_loop(run)
    if outcome.cancelled_at is None and final_evaluation_due(run):
        outcome.last_eval = run.evaluate()  # by every rank: a sharded model's forward needs them all
    if ranks.sharded and outcome.cancelled_at is None:
        weights = full_weights(run.model)  # every rank sends its slices; rank 0 gets the whole model
        if ranks.is_main:
            run.prepared = replace(run.prepared, model=unsharded_copy(run.model, weights, device.name))
    if not ranks.is_main:  # rank 0 writes the output and reports the end
        return TrainResult(status="cancelled" if outcome.cancelled_at else "succeeded", steps=run.state.step,
                           final_loss=outcome.final_loss, output_path=str(output_dir),
                           trainable_parameters=prepared.trainable_count)
    run.ranks = SINGLE  # the others are done: rank 0 evaluates and writes the output alone, waiting for no one
    if outcome.cancelled_at is not None:
        return TrainResult(status="cancelled", steps=run.state.step, final_loss=outcome.final_loss,
                           output_path=str(outcome.cancelled_at), trainable_parameters=prepared.trainable_count,
                           eval=outcome.last_eval, model=run.model)
    return finish(run, outcome)


CHAT_TASKS = ("sft", "preference", "reward", "grpo")  # the tasks whose rows are rendered through a chat template


def _template_differs_from_base(config: TrainConfig, tokenizer) -> bool:
    if config.task not in CHAT_TASKS:
        return False
    base = load_tokenizer(config.base_model, trust_remote_code=config.trust_remote_code)
    return base.chat_template != tokenizer.chat_template


def load_data(config: TrainConfig, sink: EventSink, output_dir: Path) -> TrainData:
    """Tokenized rows (from the cache when the same file was tokenized the
    same way before), split into training and validation, and the run's
    length in optimizer steps."""
    dataset_name = config.dataset_name or Path(config.dataset_path).name
    sink.emit(LogEvent(message=f"Reading {dataset_name} for task {config.task}"))
    tokenizer = load_tokenizer(config.base_model, trust_remote_code=config.trust_remote_code)
    if config.task in CHAT_TASKS:  # before the cache key is taken: it includes the template
        template = use_chat_template(tokenizer, config.chat_template)
        try:
            system = use_system_prompt(tokenizer, config.system_prompt, config.system_prompt_text)
        except ValueError as exc:
            raise ConfigError({"system_prompt": str(exc)}) from None
        sink.emit(LogEvent(message=f"Rendering rows with {template}; {system}"))
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir(output_dir)
    data, cached = load_task_data_cached(config.task, config.dataset_path, name=dataset_name, tokenizer=tokenizer,
                                         max_length=config.max_length, loss_on_prompt=config.loss_on_prompt,
                                         cache_dir=cache_dir,
                                         # a bar on the job page: rows done, ETA (at most two events a second)
                                         progress=sink_progress(sink, phase="Tokenizing rows", unit="rows"))
    if cached == "hit":
        sink.emit(LogEvent(message=f"Using tokenized data from cache ({cache_dir})"))
    elif cached != "stored":
        sink.emit(LogEvent(message=f"Tokenized data {cached} in the cache {cache_dir}; the next run tokenizes again"))
    train_items, validation_items = split_validation(data.items, config.validation_ratio, config.seed)
    if config.task == "preference":  # KTO trains on single completions (pairs split), the others on pairs
        train_items, validation_items = (items_for_loss(config.preference_loss, items, max_length=config.max_length)
                                         for items in (train_items, validation_items))
    if not train_items:
        raise DatasetError(f"no usable rows (every row is too long before its response starts at max length "
                           f"{config.max_length}); raise max length", file=dataset_name)
    sink.emit(LogEvent(message=f"{len(train_items)} training rows, {len(validation_items)} validation rows "
                               f"({data.rows_dropped} dropped, {data.truncated} truncated to {config.max_length} "
                               f"tokens)"))
    rows_per_step = config.batch_size * config.gradient_accumulation
    steps_per_epoch = math.ceil(len(train_items) / rows_per_step)
    return TrainData(tokenizer=tokenizer, data=data, train_items=train_items, validation_items=validation_items,
                     collate=collate_for_task(config.task, pad_token_id=tokenizer.pad_token_id),
                     rows_per_step=rows_per_step, steps_per_epoch=steps_per_epoch,
                     total_steps=config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs)))


def with_reference_logps(data: TrainData, prepared, device, sink: EventSink, *, batch_size: int) -> TrainData:
    """The pairs with the reference model's log-probabilities attached,
    scored once before any step (and before a checkpoint is loaded, so the
    weights are still the base's)."""
    sink.emit(LogEvent(message=f"Scoring {len(data.train_items) + len(data.validation_items)} rows with the "
                               f"reference model once"))
    score = partial(prepared.objective.precompute, collate=data.collate, batch_size=batch_size,
                    device=device.name, autocast=device.autocast)
    return replace(data, train_items=score(data.train_items), validation_items=score(data.validation_items))


def train_loop(run: Run) -> LoopOutcome:
    """Optimizer steps until the run's length, an early stop or a cancel.
    The rows of every step depend only on (seed, epoch), so a resumed run
    skips the batches its checkpoint had done and goes on exactly."""
    config, state, total_steps = run.config, run.state, run.data.total_steps
    if state.step == 0:
        run.answer_golden_prompts()  # the starting point the checkpoints' answers are compared with
    run.model.train()
    outcome, first_step = LoopOutcome(final_loss=state.last_loss), state.step
    pending: list = []  # micro-batches of the step being accumulated
    while state.step < total_steps and not outcome.stopped_early:
        for index, batch in enumerate(batches(run.data.train_items, batch_size=config.batch_size, seed=config.seed,
                                              epoch=state.epoch, group_by_length=config.group_by_length)):
            if index < state.batches_done_in_epoch:
                continue  # resuming: these were trained on before the checkpoint
            pending.append(batch)
            if len(pending) < config.gradient_accumulation:
                continue
            step_started = time.monotonic()
            loss_sum, tokens, grad_norm, penalty = optimizer_step(run, pending)
            task_metrics = run.prepared.step_metrics() if run.prepared.step_metrics else {}
            state.batches_done_in_epoch = index + 1
            pending = []
            outcome.final_loss = float(loss_sum) / config.gradient_accumulation  # the mean over the micro-batches
            state.last_loss = outcome.final_loss
            if not math.isfinite(outcome.final_loss):
                raise ResourceError(f"the loss became {outcome.final_loss} at step {state.step}; lower the learning "
                                    f"rate (now {config.learning_rate}) or use fp32 precision")
            _report_metrics(run, outcome, tokens=tokens, grad_norm=grad_norm, penalty=penalty,
                            step_started=step_started, steps_done=state.step - first_step, task_metrics=task_metrics)
            if run.data.validation_items and config.eval_every and state.step % config.eval_every == 0:
                _evaluate_in_loop(run, outcome)
            if _checkpoint_or_stop(run, outcome):
                return outcome
            if state.step >= total_steps or outcome.stopped_early:
                break
        else:
            state.epoch, state.batches_done_in_epoch = state.epoch + 1, 0
    return outcome


def optimizer_step(run: Run, micro_batches: list) -> tuple[Any, int, float | None, float | None]:
    """Forward and backward over the step's micro-batches, then one optimizer
    step: (summed task loss as a tensor, real tokens seen, gradient norm or
    None, the method's penalty or None)."""
    import torch

    config, state, prepared, ranks = run.config, run.state, run.prepared, run.ranks
    loss_sum, tokens = 0.0, 0
    try:
        for micro in micro_batches:
            micro = ranks.shard(micro)  # this process's rows of the global batch (all of them on one device)
            inputs = {k: v.to(run.device.name) for k, v in prepared.collate(micro).items()} if micro else None
            backward_weight, report_weight = ranks.loss_share(inputs)  # 1, 1 on one device
            if inputs is None:
                continue
            with run.device.autocast():
                loss = prepared.compute_loss(inputs)
            (loss * backward_weight / len(micro_batches)).backward()
            loss_sum = loss_sum + loss.detach() * report_weight  # read once per step: no device sync per micro-batch
            tokens += sum(len(example.input_ids) for example in micro)  # real tokens, not padding
        penalty = None
        if prepared.penalty:
            # The same weights for every micro-batch: once a step is the mean
            # of adding it to each micro-batch's loss.
            penalty = prepared.penalty()
            penalty.backward()
            penalty = float(penalty.detach())
    except torch.OutOfMemoryError:
        raise ResourceError(f"out of memory at step {state.step + 1} with batch size {config.batch_size} "
                            f"and max length {config.max_length}; lower either, turn on gradient "
                            f"checkpointing, or raise gradient accumulation instead of batch size") from None
    ranks.average_gradients(prepared.trainable)
    loss_sum, tokens = ranks.all_sum(loss_sum), ranks.all_sum(tokens)
    grad_norm = (torch.nn.utils.clip_grad_norm_(prepared.trainable, config.max_grad_norm).item()
                 if config.max_grad_norm > 0 else None)
    run.optimizer.step()
    run.scheduler.step()
    if run.method.on_step:
        run.method.on_step(run.model, state.step + 1)  # AdaLoRA reallocates ranks here
    if run.method.grow:  # IncreLoRA, TriAdaptLoRA: ranks grow, and the optimizer's state with them
        for message in run.method.grow(run.model, state.step + 1, run.optimizer):
            run.sink.emit(LogEvent(message=message))
    run.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.tokens_seen += tokens
    return loss_sum, tokens, grad_norm, penalty


def _report_metrics(run: Run, outcome: LoopOutcome, *, tokens: int, grad_norm: float | None, penalty: float | None,
                    step_started: float, steps_done: int, task_metrics: dict) -> None:
    state, total_steps = run.state, run.data.total_steps
    now = time.monotonic()
    elapsed = now - outcome.started
    run.sink.emit(MetricsEvent(
        step=state.step, total_steps=total_steps, epoch=round(state.step / run.data.steps_per_epoch, 4),
        loss=round(outcome.final_loss, 6), lr=run.scheduler.get_last_lr()[0],
        grad_norm=None if grad_norm is None else round(grad_norm, 6),
        tokens_per_s=round(tokens / max(now - step_started, 1e-9), 1), tokens_seen=state.tokens_seen,
        elapsed_s=round(elapsed, 3), eta_s=round(elapsed / steps_done * (total_steps - state.step), 1),
        memory_mib=round(memory_mib(run.device.name), 1), penalty=None if penalty is None else round(penalty, 6),
        **task_metrics))


def _evaluate_in_loop(run: Run, outcome: LoopOutcome) -> None:
    """Evaluate, and stop early after ``early_stopping_patience`` evaluations without a lower loss."""
    state, patience = run.state, run.config.early_stopping_patience
    outcome.last_eval = run.evaluate()
    if patience and state.evals_without_improvement >= patience:
        run.sink.emit(LogEvent(message=f"Early stopping at step {state.step}: no lower eval loss in {patience} "
                                       f"evaluations (best {state.best_eval_loss} at step {state.best_step})"))
        outcome.stopped_early = True


def _checkpoint_or_stop(run: Run, outcome: LoopOutcome) -> bool:
    """Write a checkpoint every ``save_every`` steps and when a cancel
    arrives; True when the run must stop (cancelled)."""
    state, stop = run.state, run.sink.should_stop()
    if stop or state.step % run.config.save_every == 0:
        path = run.save_checkpoint(f"step-{state.step:07d}")
        run.sink.emit(CheckpointEvent(step=state.step, path=str(path)))
        if not stop:
            run.answer_golden_prompts()
    if stop:
        run.sink.emit(LogEvent(message=f"Stopped at step {state.step} of {run.data.total_steps}; checkpoint kept"))
        outcome.cancelled_at = path
    return stop


def final_evaluation_due(run: Run) -> bool:
    """Whether the final state still needs evaluating (it was not, in the loop)."""
    config = run.config
    return bool(run.data.validation_items) and not (config.eval_every and run.state.step % config.eval_every == 0)


def finish(run: Run, outcome: LoopOutcome) -> TrainResult:
    """The last evaluation, the output (the best checkpoint where asked),
    its model card, and the artifact event."""
    config, state, method = run.config, run.state, run.method
    if config.load_best_at_end and state.best_step is not None and state.best_step != state.step:
        checkpoints.load_weights(run.model, run.output_dir / "checkpoints" / "best")
        run.sink.emit(LogEvent(message=f"Output is the best checkpoint (step {state.best_step}, eval loss "
                                       f"{state.best_eval_loss})"))
    if state.step % config.save_every:
        run.answer_golden_prompts()  # the output's answers (a checkpoint step has them already)
    run.model.eval()
    out_dir = run.output_dir / method.produces
    if method.export:
        method.export(run.model, out_dir)  # e.g. PiSSA/OLoRA/CorDA adapters rewritten to load on the plain base
    else:
        checkpoints.save_weights(run.model, out_dir)
    if method.produces == "model" or _template_differs_from_base(config, run.data.tokenizer):
        # an adapter ships the tokenizer only when its chat template is not the base model's own
        # (chosen, or the fallback): the playground and a fold then prompt it as it was trained
        run.data.tokenizer.save_pretrained(out_dir)
    trainable = run.prepared.trainable_count
    write_model_card(out_dir, config=config, method=method, final_loss=outcome.final_loss, steps=state.step,
                     trainable_parameters=trainable, evaluation=outcome.last_eval)
    run.sink.emit(ArtifactEvent(artifact_kind=method.produces, path=str(out_dir),
                                metadata={"final_loss": outcome.final_loss, "steps": state.step,
                                          "method": config.method, "task": config.task,
                                          "trainable_parameters": trainable,
                                          "total_parameters": run.prepared.total_count, "eval": outcome.last_eval}))
    run.sink.emit(LogEvent(message=f"Finished {state.step} steps in {time.monotonic() - outcome.started:.1f} s, "
                                   f"final loss {loss_text(outcome.final_loss)}"))
    return TrainResult(status="succeeded", steps=state.step, final_loss=outcome.final_loss, output_path=str(out_dir),
                       trainable_parameters=trainable, eval=outcome.last_eval, model=run.model)
