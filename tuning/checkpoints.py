"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint directory holds the trainable weights (a peft adapter, or a
full model for methods that train the model itself), ``optimizer.pt``
(optimizer and scheduler state, RNG state; read back with
``weights_only=True``, so loading never runs pickled code) and
``trainer_state.json`` (step, epoch, position in the epoch, best eval loss).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0  # micro-batches of ``epoch`` already trained on
    tokens_seen: int = 0  # non-padding tokens trained on
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0


def save_weights(model, directory: Path, *, tokenizer=None) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_checkpoint(directory: Path, *, model, optimizer, scheduler, state: TrainerState) -> Path:
    import torch

    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_weights(model, partial)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state()}, partial / OPTIMIZER_FILE)
    (partial / STATE_FILE).write_text(json.dumps(asdict(state)))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)  # a checkpoint is either whole or absent
    return directory


def rotate(root: Path, keep: int) -> None:
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest(root: Path) -> Path | None:
    candidates = sorted(p for p in root.glob("step-*") if (p / STATE_FILE).exists())
    return candidates[-1] if candidates else None


def load_weights(model, directory: Path) -> None:
    """Put a checkpoint's weights into ``model`` (the same method prepared
    the same base), for resuming or for loading the best checkpoint."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no weights in checkpoint {directory}")
    state = {}
    for file in files:
        state.update(load_file(file))
    adapter_config = directory / "adapter_config.json"
    if adapter_config.exists():
        from peft.utils import set_peft_model_state_dict

        rank_pattern = json.loads(adapter_config.read_text()).get("rank_pattern")
        if rank_pattern:  # AdaLoRA pruned ranks during training: shape the modules like the checkpoint
            model.peft_config["default"].rank_pattern = rank_pattern
        set_peft_model_state_dict(model, state)
    else:
        model.load_state_dict(state, strict=False)  # tied weights are saved once


def load_checkpoint(directory: Path, *, model, optimizer, scheduler) -> TrainerState:
    import torch

    load_weights(model, directory)
    saved = torch.load(directory / OPTIMIZER_FILE, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return TrainerState(**json.loads((directory / STATE_FILE).read_text()))
