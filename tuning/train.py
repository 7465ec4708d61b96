"""The training loop: supervised fine-tuning of a causal LM, top to bottom.

``run_train(config, sink)`` is the one entry point, called by the CLI and
by the worker alike. It reports everything through ``sink`` and checks
``sink.should_stop()`` after every optimizer step, so a cancel takes
effect within one step and leaves a checkpoint behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuning.config import TrainConfig
from tuning.data import sft
from tuning.data.readers import read_examples
from tuning.errors import ConfigError, DatasetError, ResourceError
from tuning.events import ArtifactEvent, CheckpointEvent, EventSink, LogEvent, MetricsEvent
from tuning.methods import METHODS, MethodContext
from tuning.modelcard import write_model_card
from tuning.models import load_causal_lm, load_tokenizer


@dataclass
class TrainResult:
    status: str  # "succeeded" or "cancelled"
    steps: int
    final_loss: float | None
    output_path: str  # the adapter directory, or the last checkpoint when cancelled
    trainable_parameters: int
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


def _save_checkpoint(model, output_dir: Path, *, step: int, epoch: int, keep: int) -> Path:
    root = output_dir / "checkpoints"
    path = root / f"step-{step:07d}"
    model.save_pretrained(path, safe_serialization=True)
    (path / "trainer_state.json").write_text(json.dumps({"step": step, "epoch": epoch}))
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def run_train(config: TrainConfig, sink: EventSink) -> TrainResult:
    import torch
    from transformers import get_scheduler

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    method = METHODS[config.method]
    params = method.params(**config.method_params)
    device, precision, autocast = _device_and_autocast(config.precision)
    torch.manual_seed(config.seed)

    # --- data -------------------------------------------------------------
    sink.emit(LogEvent(message=f"Reading {config.dataset_name or Path(config.dataset_path).name}"))
    examples = read_examples(config.dataset_path, name=config.dataset_name or None)
    sink.emit(LogEvent(message=f"Loading base model {config.base_model_name or config.base_model} on {device}"))
    tokenizer = load_tokenizer(config.base_model, trust_remote_code=config.trust_remote_code)
    tokenized = sft.tokenize_examples(examples, tokenizer, max_length=config.max_length,
                                      loss_on_prompt=config.loss_on_prompt)
    if not tokenized:
        raise DatasetError(f"every row is longer than max length {config.max_length} before its response "
                           f"starts; raise max length", file=config.dataset_name)
    truncated = sum(len(t.input_ids) >= config.max_length for t in tokenized)
    sink.emit(LogEvent(message=f"{len(tokenized)} training rows ({len(examples) - len(tokenized)} dropped, "
                               f"{truncated} truncated to {config.max_length} tokens)"))

    # --- model ------------------------------------------------------------
    model = load_causal_lm(config.base_model, trust_remote_code=config.trust_remote_code)
    if config.base_model_name:
        model.config.name_or_path = config.base_model_name  # recorded in adapter_config.json
    model = method.prepare(model, params, MethodContext(task="sft", device=device)).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_count = sum(p.numel() for p in trainable)
    total_count = sum(p.numel() for p in model.parameters())
    sink.emit(LogEvent(message=f"{method.label}: {trainable_count:,} trainable of {total_count:,} parameters "
                               f"({100 * trainable_count / total_count:.2f}%), precision {precision}"))

    # --- schedule ---------------------------------------------------------
    rows_per_step = config.batch_size * config.gradient_accumulation
    steps_per_epoch = math.ceil(len(tokenized) / rows_per_step)
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler("constant_with_warmup" if config.scheduler == "constant" else config.scheduler,
                              optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    sink.emit(LogEvent(message=f"Training {total_steps} steps of {rows_per_step} rows "
                               f"({steps_per_epoch} steps per epoch)"))

    # --- loop -------------------------------------------------------------
    model.train()
    step, epoch, loss_value = 0, 0, None
    started = time.monotonic()
    pending: list = []  # micro-batches of the step being accumulated
    while step < total_steps:
        for batch in sft.batches(tokenized, batch_size=config.batch_size, seed=config.seed, epoch=epoch):
            pending.append(batch)
            if len(pending) < config.gradient_accumulation:
                continue
            step_started = time.monotonic()
            losses, tokens = [], 0
            try:
                for micro in pending:
                    inputs = {k: v.to(device) for k, v in sft.collate(micro, pad_token_id=tokenizer.pad_token_id).items()}
                    with autocast():
                        loss = model(**inputs).loss
                    (loss / len(pending)).backward()
                    losses.append(loss.item())
                    tokens += int(inputs["attention_mask"].sum())
            except torch.OutOfMemoryError:
                raise ResourceError(f"out of memory at step {step + 1} with batch size {config.batch_size} and "
                                    f"max length {config.max_length}; lower either, or raise gradient "
                                    f"accumulation instead of batch size") from None
            pending = []
            grad_norm = (torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm).item()
                         if config.max_grad_norm > 0 else None)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = sum(losses) / len(losses)
            if not math.isfinite(loss_value):
                raise ResourceError(f"the loss became {loss_value} at step {step}; lower the learning rate "
                                    f"(now {config.learning_rate}) or use fp32 precision")
            now = time.monotonic()
            elapsed = now - started
            sink.emit(MetricsEvent(
                step=step, total_steps=total_steps, epoch=round(step / steps_per_epoch, 4), loss=round(loss_value, 6), lr=scheduler.get_last_lr()[0],
                grad_norm=None if grad_norm is None else round(grad_norm, 6),
                tokens_per_s=round(tokens / max(now - step_started, 1e-9), 1), elapsed_s=round(elapsed, 3),
                eta_s=round(elapsed / step * (total_steps - step), 1), memory_mib=round(_memory_mib(device), 1)))
            stop = sink.should_stop()
            if stop or step % config.save_every == 0:
                path = _save_checkpoint(model, output_dir, step=step, epoch=epoch, keep=config.keep_checkpoints)
                sink.emit(CheckpointEvent(step=step, path=str(path)))
            if stop:
                sink.emit(LogEvent(message=f"Stopped at step {step} of {total_steps}; checkpoint kept"))
                return TrainResult(status="cancelled", steps=step, final_loss=loss_value, output_path=str(path),
                                   trainable_parameters=trainable_count, model=model)
            if step >= total_steps:
                break
        epoch += 1

    # --- output -----------------------------------------------------------
    model.eval()
    adapter_dir = output_dir / "adapter"
    model.save_pretrained(adapter_dir, safe_serialization=True)
    write_model_card(adapter_dir, config=config, method_label=method.label, final_loss=loss_value, steps=step,
                     trainable_parameters=trainable_count)
    sink.emit(ArtifactEvent(artifact_kind=method.produces, path=str(adapter_dir),
                            metadata={"final_loss": loss_value, "steps": step, "method": config.method,
                                      "trainable_parameters": trainable_count}))
    sink.emit(LogEvent(message=f"Finished {step} steps in {time.monotonic() - started:.1f} s, final loss "
                               f"{loss_value:.4f}"))
    return TrainResult(status="succeeded", steps=step, final_loss=loss_value, output_path=str(adapter_dir),
                       trainable_parameters=trainable_count, model=model)
