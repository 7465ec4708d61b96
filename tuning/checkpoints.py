"""Checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint directory holds the trainable weights (a peft adapter, or a
full model for methods that train the model itself), ``optimizer.pt``
(optimizer and scheduler state, RNG state; read back with
``weights_only=True``, so loading never runs pickled code) and
``trainer_state.json`` (step, epoch, position in the epoch, best eval loss).
A fully sharded run's checkpoint holds its weights and optimizer state as
DCP shards instead (``save_sharded_checkpoint``, at the end of this file),
read without running pickled code (``tuning.dcp_reading``).
A method that keeps training state outside its weights (AdaLoRA's rank
allocator) adds ``method_state.safetensors``: its ``training_state``
tensors, with the rest of that state as JSON in the file's metadata.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from tuning.dcp_reading import safe_planner, safe_reader
from tuning.errors import ConfigError

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
METHOD_STATE_FILE = "method_state.safetensors"  # not weights: load_weights skips it
SHARDED_DIR = "sharded"  # a sharded checkpoint's weights and optimizer state: DCP's .distcp files and index
SCHEDULE_FILE = "schedule.pt"  # beside it: the scheduler's and rank 0's RNG state (read with weights_only=True)
# "step-0000040"; a checkpoint being written is "step-0000040.partial" until it is whole.
CHECKPOINT_NAME = re.compile(r"step-(\d+)")


@dataclass
class TrainerState:
    step: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0  # micro-batches of ``epoch`` already trained on
    tokens_seen: int = 0  # non-padding tokens trained on
    # the last step's loss: a run resumed from its final checkpoint (its worker killed before it wrote the output)
    # takes no step, and still reports the loss it ended with
    last_loss: float | None = None
    best_eval_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0


def save_weights(model, directory: Path, *, tokenizer=None) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_checkpoint(directory: Path, *, model, optimizer, scheduler, state: TrainerState,
                    training_state: Callable[[Any], tuple[dict, dict]] | None = None) -> Path:
    """Write a checkpoint; ``training_state`` is the method's hook of that
    name, where it has one."""
    import torch

    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    save_weights(model, partial)
    if training_state is not None:  # after save_weights, which may rewrite the adapter's config (AdaLoRA)
        _save_method_state(partial / METHOD_STATE_FILE, *training_state(model))
    rng = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout on a GPU draws from the CUDA generators
        rng["cuda_rng"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **rng},
               partial / OPTIMIZER_FILE)
    (partial / STATE_FILE).write_text(json.dumps(asdict(state)))
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)  # a checkpoint is either whole or absent
    return directory


def _complete(root: Path) -> list[Path]:
    """The whole checkpoints under root, oldest first. A ``.partial`` directory is not one, even with
    its state file written: a worker killed before the rename left it."""
    return sorted(p for p in root.glob("step-*") if CHECKPOINT_NAME.fullmatch(p.name) and (p / STATE_FILE).exists())


def checkpoint_step(checkpoint: Path) -> int:
    """The step a checkpoint directory was written at."""
    return int(CHECKPOINT_NAME.fullmatch(checkpoint.name).group(1))


def rotate(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints. Called after a save, when this run writes none: any
    ``.partial`` directory left is an earlier attempt's, killed mid-save, and goes too."""
    for old in [*_complete(root)[:-keep], *root.glob("step-*.partial")]:
        shutil.rmtree(old, ignore_errors=True)


def latest(root: Path) -> Path | None:
    candidates = _complete(root)
    return candidates[-1] if candidates else None


def load_weights(model, directory: Path) -> None:
    """Put a checkpoint's weights into ``model`` (the same method prepared
    the same base), for resuming or for loading the best checkpoint."""
    from safetensors.torch import load_file

    if is_sharded_checkpoint(directory):
        model.load_state_dict(load_sharded_weights(directory), strict=False)
        return
    files = sorted(file for file in directory.glob("*.safetensors") if file.name != METHOD_STATE_FILE)
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


def load_checkpoint(directory: Path, *, model, optimizer, scheduler,
                    restore_training_state: Callable[[Any, dict, dict], None] | None = None) -> TrainerState:
    """Put a checkpoint back into a freshly prepared run (the same config);
    ``restore_training_state`` is the method's hook of that name, which
    puts back the weights along with the rest of the method's state."""
    import torch

    if is_sharded_checkpoint(directory):
        return load_sharded_checkpoint(directory, model=model, optimizer=optimizer, scheduler=scheduler)
    if restore_training_state is None:
        load_weights(model, directory)
    elif not (directory / METHOD_STATE_FILE).exists():
        raise ConfigError({"resume_from": f"{directory.name} has no {METHOD_STATE_FILE} (it was written before "
                                          f"this method's training state was checkpointed); start a new run"})
    else:
        restore_training_state(model, *_load_method_state(directory / METHOD_STATE_FILE))
    saved = torch.load(directory / OPTIMIZER_FILE, weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if "cuda_rng" in saved and torch.cuda.is_available() and len(saved["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return TrainerState(**json.loads((directory / STATE_FILE).read_text()))


def _save_method_state(path: Path, tensors: dict, info: dict) -> None:
    from safetensors.torch import save_file

    save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, path,
              metadata={"info": json.dumps(info)})


def _load_method_state(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as file:
        return {key: file.get_tensor(key) for key in file.keys()}, json.loads(file.metadata()["info"])


# --- sharded checkpoints (FSDP2 runs, ``tuning.sharding``) --------------------
# Each rank writes its own slices of the weights and the optimizer state with
# torch.distributed.checkpoint (DCP) into SHARDED_DIR; rank 0 writes the
# schedule, its RNG state, the model's config.json and the trainer state
# beside them. DCP reads them back onto any number of ranks (it reshards),
# one process included; ``consolidate`` turns one into an ordinary model.

def is_sharded_checkpoint(directory: Path) -> bool:
    return (directory / SHARDED_DIR).is_dir()


def save_sharded_checkpoint(directory: Path, *, model, optimizer, scheduler, state: TrainerState, ranks) -> Path:
    """Called by every rank of the group at once (``ranks``: ``tuning.ranks.Ranks``); the directory
    appears whole or not at all, as ``save_checkpoint``'s."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    partial = directory.with_name(directory.name + ".partial")
    if ranks.is_main:
        shutil.rmtree(partial, ignore_errors=True)
    ranks.barrier()
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=partial / SHARDED_DIR)
    if ranks.is_main:
        torch.save({"scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()}, partial / SCHEDULE_FILE)
        model.config.save_pretrained(partial)  # what ``consolidate`` needs to make a loadable model
        (partial / STATE_FILE).write_text(json.dumps(asdict(state)))
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
    ranks.barrier()  # no rank goes on before the checkpoint is whole
    return directory


def load_sharded_checkpoint(directory: Path, *, model, optimizer, scheduler) -> TrainerState:
    """Put a sharded checkpoint back into a freshly prepared run, on every rank of the group at once
    (or in one process, for a plain model)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, storage_reader=safe_reader(directory / SHARDED_DIR), planner=safe_planner(),
             no_dist=not torch.distributed.is_initialized())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    saved = torch.load(directory / SCHEDULE_FILE, weights_only=True)
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return TrainerState(**json.loads((directory / STATE_FILE).read_text()))


def load_sharded_weights(directory: Path) -> dict:
    """A sharded checkpoint's whole weights, read by this process alone (no collective: the other
    ranks may be gone, or never were)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = safe_reader(directory / SHARDED_DIR)
    # Empty tensors of the saved shapes for every weight the index lists ("model.<name>"), filled by DCP.
    weights = {key.removeprefix("model."): torch.empty(entry.size, dtype=entry.properties.dtype)
               for key, entry in reader.read_metadata().state_dict_metadata.items()
               if key.startswith("model.") and isinstance(entry, TensorStorageMetadata)}
    dcp.load({"model": weights}, storage_reader=reader, planner=safe_planner(), no_dist=True)
    return weights


def consolidate(checkpoint: Path, out_dir: Path) -> Path:
    """A sharded checkpoint as an ordinary model directory (config.json and model.safetensors) that
    stock transformers loads in one process."""
    from safetensors.torch import save_file

    if not is_sharded_checkpoint(checkpoint):
        raise ConfigError({"checkpoint": f"{checkpoint} is not a sharded checkpoint ({SHARDED_DIR}/ is missing)"})
    weights = load_sharded_weights(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint / "config.json", out_dir / "config.json")
    save_file({key: value.contiguous() for key, value in weights.items()}, out_dir / "model.safetensors",
              metadata={"format": "pt"})
    return out_dir
