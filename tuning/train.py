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

import contextlib
import math
import resource
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tuning import checkpoints
from tuning.attention import use_segment_attention
from tuning.config import TrainConfig, check_against_model
from tuning.data.cache import default_cache_dir, load_task_data_cached
from tuning.data.packing import collate_packed, context_tokens_for, packing_works
from tuning.data.splits import split_validation
from tuning.data.tasks import batches, collate_for_task
from tuning.errors import ConfigError, DatasetError, ResourceError
from tuning.evaluate import evaluate
from tuning.loss import fused_loss_works, fused_next_token_loss, next_token_loss, selects_logits
from tuning.events import ArtifactEvent, CheckpointEvent, EvalEvent, EventSink, LogEvent, MetricsEvent, SamplesEvent
from tuning.methods import METHODS, MethodContext
from tuning.modelcard import write_model_card
from tuning.models import load_model_for_task, load_tokenizer

CALIBRATION_BATCHES = 8  # batches shown to data-driven initialisations (EVA, CorDA)
# Packed rows are padded to a multiple of this many tokens: every new matmul
# shape costs oneDNN (CPU) a cached kernel, about 100 MB over the sample
# data's first dozen steps when each packed width is new; 8 also suits GPU
# tensor cores. At most 7 tokens a row are padding.
PACKED_WIDTH_MULTIPLE = 8


@dataclass
class TrainResult:
    status: str  # "succeeded" or "cancelled"
    steps: int
    final_loss: float | None
    output_path: str  # the output directory, or the last checkpoint when cancelled
    trainable_parameters: int
    eval: dict | None = None  # the last evaluation
    model: Any = None  # the trained model, for in-process callers (tests, evaluation)


def _device_and_autocast(precision: str):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "auto":
        # bf16 autocast is faster than fp32 on current CPUs too (see FIELD-NOTES).
        precision = "bf16" if device == "cpu" or torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and device == "cpu":
        raise ConfigError({"precision": "fp16 needs a CUDA GPU; choose bf16 or fp32 on a CPU"})
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(device_type=device, dtype=dtype)) if dtype else contextlib.nullcontext
    return device, precision, autocast


def _memory_mib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _why_not_packed(config: TrainConfig, method, model, device: str, autocast) -> str | None:
    """None where the run can use padding-free (packed) batches, else why not."""
    if config.task == "classify":
        return "classification predicts one label per row"
    if not method.packs_rows:
        if not method.predicts_each_token:
            return f"{method.label} prepends virtual tokens to every row, which packed rows cannot share"
        return f"{method.label} does not train on packed rows"
    with autocast():  # as training runs it: the frozen base may be stored in bf16
        works = packing_works(model, device)
    if not works:
        attention = getattr(model.config, "_attn_implementation", "unknown")
        return f"this model (attention '{attention}') lets packed rows see each other"
    return None


def _store_frozen_base_in_bf16(model, method, params, precision: str) -> int:
    """Under bf16 autocast every matmul casts its fp32 weight to bf16 on every
    call. The frozen linear weights of a plain LoRA run are only ever used
    that way, so they can be stored in bf16 once: the same numbers in every
    matmul, half their memory, no cast per step. Other adapters read the
    base weights outside a matmul (DoRA's norms, OFT's rotations, PiSSA's
    export), so they keep fp32. Returns how many weights were converted."""
    import torch

    if (precision != "bf16" or not method.frozen_base_in_bf16 or getattr(params, "use_dora", False)
            or getattr(params, "init", "default") not in ("default", "gaussian")):
        return 0
    shared = {id(model.get_input_embeddings().weight)}  # a tied output head is also the embedding table
    converted = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (type(module) is torch.nn.Linear and not weight.requires_grad and weight.dtype == torch.float32
                and id(weight) not in shared):
            module.weight.data = weight.data.to(torch.bfloat16)
            converted += 1
    return converted


def _adamw(groups, config: TrainConfig):
    import torch

    # The fused kernel updates every tensor in one pass: measured 7x faster
    # than the default for a 135M-parameter full fine-tune on a CPU (see
    # BENCHMARKS.md). It needs floating-point parameters on a CPU or GPU.
    params = [p for group in groups for p in group["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay,
                             **({"fused": True} if fused else {}))


def _predicts_each_token(config: TrainConfig, method) -> bool:
    """A causal LM loss over the rows' own tokens: not a classifier, no virtual prompt tokens."""
    return config.task != "classify" and method.predicts_each_token


def _loss_function(config: TrainConfig, method, model, packed: bool, device: str, autocast):
    """The cheapest way to get the loss ``model(**inputs).loss`` would give
    (``tuning.loss``), and how it is computed (None: the model's own loss)."""
    if _predicts_each_token(config, method) and not method.loss_from_model:
        with autocast():  # probed as training runs
            if fused_loss_works(model, device):
                return partial(fused_next_token_loss, model), "with the output head, a chunk of tokens at a time"
        if selects_logits(model):
            return partial(next_token_loss, model), "from the logits of labelled positions only"
    # Without a cache object transformers sees the packed layout in position_ids.
    plain = (lambda inputs: model(**inputs, use_cache=False).loss) if packed else (lambda inputs: model(**inputs).loss)
    return plain, None


def _resume_dir(config: TrainConfig, output_dir: Path) -> Path | None:
    if not config.resume_from:
        return None
    found = (checkpoints.latest(output_dir / "checkpoints") if config.resume_from == "latest"
             else Path(config.resume_from))
    if config.resume_from != "latest" and not (found / checkpoints.STATE_FILE).exists():
        raise ConfigError({"resume_from": f"{found} is not a checkpoint directory"})
    return found


def run_train(config: TrainConfig, sink: EventSink) -> TrainResult:
    import torch
    from transformers import get_scheduler

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    method = METHODS[config.method]
    params = method.params(**config.method_params)
    check_against_model(config)
    device, precision, autocast = _device_and_autocast(config.precision)
    torch.manual_seed(config.seed)

    # --- data -------------------------------------------------------------
    dataset_name = config.dataset_name or Path(config.dataset_path).name
    sink.emit(LogEvent(message=f"Reading {dataset_name} for task {config.task}"))
    tokenizer = load_tokenizer(config.base_model, trust_remote_code=config.trust_remote_code)
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir(output_dir)
    data, cached = load_task_data_cached(config.task, config.dataset_path, name=dataset_name, tokenizer=tokenizer,
                                         max_length=config.max_length, loss_on_prompt=config.loss_on_prompt,
                                         cache_dir=cache_dir)
    if cached == "hit":
        sink.emit(LogEvent(message=f"Using tokenized data from cache ({cache_dir})"))
    elif cached != "stored":
        sink.emit(LogEvent(message=f"Tokenized data {cached} in the cache {cache_dir}; the next run tokenizes again"))
    train_items, validation_items = split_validation(data.items, config.validation_ratio, config.seed)
    if not train_items:
        raise DatasetError(f"no usable rows (every row is too long before its response starts at max length "
                           f"{config.max_length}); raise max length", file=dataset_name)
    sink.emit(LogEvent(message=f"{len(train_items)} training rows, {len(validation_items)} validation rows "
                               f"({data.rows_dropped} dropped, {data.truncated} truncated to {config.max_length} tokens)"))
    collate = collate_for_task(config.task, pad_token_id=tokenizer.pad_token_id)

    rows_per_step = config.batch_size * config.gradient_accumulation
    steps_per_epoch = math.ceil(len(train_items) / rows_per_step)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))

    # --- model ------------------------------------------------------------
    sink.emit(LogEvent(message=f"Loading base model {config.base_model_name or config.base_model} on {device}"))
    load_kwargs = method.load_kwargs(params) if method.load_kwargs else {}
    quantized = "quantization_config" in load_kwargs  # loaded straight onto the GPU; never moved or cast
    if quantized:
        load_kwargs["device_map"] = {"": torch.cuda.current_device()}
    model = load_model_for_task(config.task, config.base_model, tokenizer=tokenizer, label2id=data.label2id,
                                trust_remote_code=config.trust_remote_code, **load_kwargs)
    if config.base_model_name:
        model.config.name_or_path = config.base_model_name  # recorded in adapter_config.json
    if config.gradient_checkpointing:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not quantized:
        model.to(device)

    def calibration_batches():
        for i, batch in enumerate(batches(train_items, batch_size=config.batch_size, seed=config.seed, epoch=0,
                                          group_by_length=config.group_by_length)):
            if i >= CALIBRATION_BATCHES:
                return
            yield {key: value.to(device) for key, value in collate(batch).items() if key != "labels"}

    model = method.prepare(model, params, MethodContext(task=config.task, device=device, total_steps=total_steps,
                                                        base_model=config.base_model,
                                                        calibration_batches=calibration_batches))
    if not quantized:
        model.to(device)
        if _store_frozen_base_in_bf16(model, method, params, precision):
            sink.emit(LogEvent(message="Frozen base weights stored in bf16 (the precision every matmul uses)"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_count = sum(p.numel() for p in trainable)
    total_count = sum(p.numel() for p in model.parameters())
    sink.emit(LogEvent(message=f"{method.label}: {trainable_count:,} trainable of {total_count:,} parameters "
                               f"({100 * trainable_count / total_count:.2f}%), precision {precision}"))
    # Packed batches hold the same rows as padded ones (so steps, resume and
    # the loss are unchanged) without computing on padding.
    # Segment attention runs each packed example's attention on its own
    # slice, so one row end to end is always the cheapest layout. On a CPU
    # only: on a GPU its many small calls cost more in launches than they
    # save (0.25x the Trainer's tokens/s at batch 32 on an H100), and sdpa
    # takes transformers' block mask in one fast kernel.
    segmented = (config.packing and _predicts_each_token(config, method) and device == "cpu"
                 and use_segment_attention(model))
    why_not = _why_not_packed(config, method, model, device, autocast) if config.packing else None
    packed = config.packing and why_not is None
    if packed:
        train_collate = partial(collate_packed, max_length=config.max_length, pad_token_id=tokenizer.pad_token_id,
                                context_tokens=math.inf if segmented else context_tokens_for(model),
                                pad_to_multiple_of=PACKED_WIDTH_MULTIPLE)
        sink.emit(LogEvent(message="Packing rows end to end without padding (each row attends only to itself"
                                   + (", attention computed example by example)" if segmented else ")")))
    else:
        train_collate = collate
        if why_not:
            sink.emit(LogEvent(message=f"Padded batches instead of packed ones: {why_not}"))

    compute_loss, how = _loss_function(config, method, model, packed, device, autocast)
    if how:
        sink.emit(LogEvent(message=f"Loss computed {how}"))

    # --- schedule ---------------------------------------------------------
    groups = method.param_groups(model, params, config.learning_rate) if method.param_groups else [{"params": trainable}]
    optimizer = _adamw(groups, config)
    scheduler = get_scheduler("constant_with_warmup" if config.scheduler == "constant" else config.scheduler,
                              optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    state = checkpoints.TrainerState()
    resume = _resume_dir(config, output_dir)
    if resume is not None and not method.resumable:
        raise ConfigError({"resume_from": f"{method.label} runs cannot be resumed from a checkpoint (its training "
                                          f"state is not all in the weights); start a new run"})
    if resume is not None:
        state = checkpoints.load_checkpoint(resume, model=model, optimizer=optimizer, scheduler=scheduler)
        sink.emit(LogEvent(message=f"Resumed from {resume.name} at step {state.step}"))
    sink.emit(LogEvent(message=f"Training {total_steps} steps of {rows_per_step} rows "
                               f"({steps_per_epoch} steps per epoch)"))

    def save_checkpoint(name: str) -> Path:
        path = checkpoints.save_checkpoint(output_dir / "checkpoints" / name, model=model, optimizer=optimizer,
                                           scheduler=scheduler, state=state)
        checkpoints.rotate(output_dir / "checkpoints", config.keep_checkpoints)
        return path

    def run_evaluation() -> dict:
        in_order = (validation_items[i:i + config.batch_size] for i in range(0, len(validation_items), config.batch_size))
        result = evaluate(model, (collate(b) for b in in_order), device=device, autocast=autocast, task=config.task)
        improved = state.best_eval_loss is None or result["eval_loss"] < state.best_eval_loss
        if improved:
            state.best_eval_loss, state.best_step, state.evals_without_improvement = result["eval_loss"], state.step, 0
            save_checkpoint("best")
        else:
            state.evals_without_improvement += 1
        sink.emit(EvalEvent(step=state.step, best=improved, **result))
        return result

    def answer_golden_prompts() -> None:
        """Greedy answers to the golden prompts with the weights as they are now."""
        if not config.golden_prompts or config.task == "classify":
            return
        from tuning.generate import generate_text

        model.eval()
        with autocast():
            samples = [{"prompt": prompt, "answer": generate_text(model, tokenizer, prompt,
                                                                  max_new_tokens=config.golden_max_new_tokens)}
                       for prompt in config.golden_prompts]
        model.train()
        sink.emit(SamplesEvent(step=state.step, samples=samples))

    # --- loop -------------------------------------------------------------
    if state.step == 0:
        answer_golden_prompts()  # the starting point the checkpoints' answers are compared with
    model.train()
    loss_value, last_eval, stopped_early = None, None, False
    started, first_step = time.monotonic(), state.step
    pending: list = []  # micro-batches of the step being accumulated
    while state.step < total_steps and not stopped_early:
        for index, batch in enumerate(batches(train_items, batch_size=config.batch_size, seed=config.seed,
                                              epoch=state.epoch, group_by_length=config.group_by_length)):
            if index < state.batches_done_in_epoch:
                continue  # resuming: these were trained on before the checkpoint
            pending.append(batch)
            if len(pending) < config.gradient_accumulation:
                continue
            step_started = time.monotonic()
            loss_sum, tokens = 0.0, 0
            try:
                for micro in pending:
                    inputs = {k: v.to(device) for k, v in train_collate(micro).items()}
                    with autocast():
                        loss = compute_loss(inputs)
                    (loss / len(pending)).backward()
                    loss_sum = loss_sum + loss.detach()  # read once per step: no device sync per micro-batch
                    tokens += sum(len(example.input_ids) for example in micro)  # real tokens, not padding
            except torch.OutOfMemoryError:
                raise ResourceError(f"out of memory at step {state.step + 1} with batch size {config.batch_size} "
                                    f"and max length {config.max_length}; lower either, turn on gradient "
                                    f"checkpointing, or raise gradient accumulation instead of batch size") from None
            state.batches_done_in_epoch = index + 1
            pending = []
            grad_norm = (torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm).item()
                         if config.max_grad_norm > 0 else None)
            optimizer.step()
            scheduler.step()
            if method.on_step:
                method.on_step(model, state.step + 1)  # AdaLoRA reallocates ranks here
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens_seen += tokens
            loss_value = float(loss_sum) / config.gradient_accumulation  # the mean over the step's micro-batches
            if not math.isfinite(loss_value):
                raise ResourceError(f"the loss became {loss_value} at step {state.step}; lower the learning rate "
                                    f"(now {config.learning_rate}) or use fp32 precision")
            now = time.monotonic()
            elapsed, done_here = now - started, state.step - first_step
            sink.emit(MetricsEvent(
                step=state.step, total_steps=total_steps, epoch=round(state.step / steps_per_epoch, 4),
                loss=round(loss_value, 6), lr=scheduler.get_last_lr()[0],
                grad_norm=None if grad_norm is None else round(grad_norm, 6),
                tokens_per_s=round(tokens / max(now - step_started, 1e-9), 1), tokens_seen=state.tokens_seen,
                elapsed_s=round(elapsed, 3),
                eta_s=round(elapsed / done_here * (total_steps - state.step), 1),
                memory_mib=round(_memory_mib(device), 1)))
            if validation_items and config.eval_every and state.step % config.eval_every == 0:
                last_eval = run_evaluation()
                patience = config.early_stopping_patience
                if patience and state.evals_without_improvement >= patience:
                    sink.emit(LogEvent(message=f"Early stopping at step {state.step}: no lower eval loss in "
                                               f"{patience} evaluations (best {state.best_eval_loss} at step "
                                               f"{state.best_step})"))
                    stopped_early = True
            stop = sink.should_stop()
            if stop or state.step % config.save_every == 0:
                path = save_checkpoint(f"step-{state.step:07d}")
                sink.emit(CheckpointEvent(step=state.step, path=str(path)))
                if not stop:
                    answer_golden_prompts()
            if stop:
                sink.emit(LogEvent(message=f"Stopped at step {state.step} of {total_steps}; checkpoint kept"))
                return TrainResult(status="cancelled", steps=state.step, final_loss=loss_value,
                                   output_path=str(path), trainable_parameters=trainable_count, eval=last_eval,
                                   model=model)
            if state.step >= total_steps or stopped_early:
                break
        else:
            state.epoch, state.batches_done_in_epoch = state.epoch + 1, 0

    # --- output -----------------------------------------------------------
    if validation_items and not (config.eval_every and state.step % config.eval_every == 0):
        last_eval = run_evaluation()  # the final state was not evaluated in the loop
    if config.load_best_at_end and state.best_step is not None and state.best_step != state.step:
        checkpoints.load_weights(model, output_dir / "checkpoints" / "best")
        sink.emit(LogEvent(message=f"Output is the best checkpoint (step {state.best_step}, eval loss "
                                   f"{state.best_eval_loss})"))
    if state.step % config.save_every:
        answer_golden_prompts()  # the output's answers (a checkpoint step has them already)
    model.eval()
    out_dir = output_dir / method.produces
    if method.export:
        method.export(model, out_dir)  # e.g. PiSSA/OLoRA/CorDA adapters rewritten to load on the plain base
    else:
        checkpoints.save_weights(model, out_dir)
    if method.produces == "model":
        tokenizer.save_pretrained(out_dir)
    write_model_card(out_dir, config=config, method=method, final_loss=loss_value, steps=state.step,
                     trainable_parameters=trainable_count, evaluation=last_eval)
    sink.emit(ArtifactEvent(artifact_kind=method.produces, path=str(out_dir),
                            metadata={"final_loss": loss_value, "steps": state.step, "method": config.method,
                                      "task": config.task, "trainable_parameters": trainable_count,
                                      "total_parameters": total_count,
                                      "eval": last_eval}))
    sink.emit(LogEvent(message=f"Finished {state.step} steps in {time.monotonic() - started:.1f} s, final loss "
                               f"{loss_value:.4f}"))
    return TrainResult(status="succeeded", steps=state.step, final_loss=loss_value, output_path=str(out_dir),
                       trainable_parameters=trainable_count, eval=last_eval, model=model)
