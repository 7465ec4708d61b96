"""What the new-job form shows beside the method: how many parameters the
run trains, the memory it needs against the pool's workers, and how long
it may take. A reader (no writes); the view parses the form and renders.

No model is built here: the counts and the model's shape are read from the
base model's facts, which a worker computes (``studio.catalog.services``
asks, ``worker/estimates.py`` counts). Until they are there, the estimate
is pending and the view asks for them.

Everything about the method comes from its capability flags (needs_cuda,
predicts_each_token, four_bit_base), never its name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from django.conf import settings

from studio.jobs.selectors_queue import pool_memory_bytes, pool_tokens_per_s
from studio.workers.selectors import pool_capacity
from tuning.config import TrainConfig, config_to_dict
from tuning.errors import ModelError
from tuning.fields import config_from_dict, field_specs
from tuning.methods import METHODS, Method
from tuning.methods.estimate import estimate_key, shape_config
from tuning.methods.memory import changes_that_fit, estimate_training_memory
from tuning.optimizers import optimizer_state_bytes
from tuning.preference import PREFERENCE_LOSSES
from tuning.sharding import shards_states


@dataclass(frozen=True)
class TrainEstimate:
    trainable: int
    total: int
    preflight: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        """"≈ 4.9 M trainable of 139 M (3.5 %)"."""
        percent = 100 * self.trainable / max(self.total, 1)
        return (f"≈ {_count(self.trainable)} trainable of {_count(self.total)} "
                f"({percent:.{3 if percent >= 10 else 2}g} %)")

    @property
    def exact(self) -> str:
        return f"{self.trainable:,} of {self.total:,} parameters"


def train_pool(method: Method, gpu_pools) -> str:
    """The pool a training run of ``method`` goes to: the first GPU pool for a method that needs CUDA."""
    return gpu_pools[0] if method.needs_cuda and gpu_pools else settings.DEFAULT_DEVICE_POOL


def devices_refusal(*, pool: str, devices: int) -> str:
    """Why the pool's alive workers cannot give a run ``devices`` devices, even all joining it ("" when
    they can, and when no worker of the pool is alive: the job may wait for one)."""
    capacity = pool_capacity(pool)
    if capacity is None or devices <= capacity.devices:
        return ""
    return (f"pool {pool} has {capacity.devices} device(s) on its {capacity.workers} alive worker(s) "
            f"(at most {capacity.largest} on one); ask for 1 … {capacity.devices}")


def train_estimate(*, base_model, method: Method, task: str, method_params: dict, run_values: dict, dataset,
                   gpu_pools) -> TrainEstimate | None:
    """The estimate for a run of ``method`` on ``base_model``, or None while
    a worker has not counted it yet. ``run_values`` are the form's training
    settings (blanks left out). Raises ModelError with the worker's reason
    when it could not count (a missing model directory, say)."""
    facts = base_model.facts or {}
    counted = facts.get("counts", {}).get(estimate_key(method.name, method_params, task))
    if counted is None:
        return None
    if "error" in counted:
        raise ModelError(counted["error"])
    trainable, total = counted["trainable"], counted["total"]
    values = {spec.name: spec.default for spec in field_specs(TrainConfig)} | run_values
    preflight = _preflight(base_model=base_model, method=method, task=task, values=values, dataset=dataset,
                           gpu_pools=list(gpu_pools), trainable=trainable, total=total, method_params=method_params)
    return TrainEstimate(trainable=trainable, total=total, preflight=preflight)


def _preflight(*, base_model, method: Method, task: str, values: dict, dataset, gpu_pools: list,
               trainable: int, total: int, method_params: dict) -> dict:
    """Memory needed against the pool's device memory, and the time at the
    pool's recent speed; with the changes that would make it fit."""
    pool = train_pool(method, gpu_pools)
    # Per device: a run over several splits each batch, and under FSDP2 the weights and their states too.
    sharded = shards_states(values["sharding"], devices=values["devices"], method=method)
    shape = {"batch_size": values["batch_size"], "max_length": values["max_length"],
             "devices": values["devices"], "sharded": sharded,
             "precision": values["precision"], "gradient_checkpointing": values["gradient_checkpointing"],
             # The trainer fuses the head and the loss for these methods (tuning.loss), sharded or not.
             "fused_loss": method.predicts_each_token,
             # A full fine-tune scored against a live reference keeps a frozen copy of the base.
             "reference_copy": (task == "preference" and method.produces == "model"
                                and values["reference"] == "base"
                                and PREFERENCE_LOSSES[values["preference_loss"]].needs_reference)}
    config = shape_config(base_model.facts["shape"])
    # GaLore keeps low-rank moments: the estimate shows its optimizer state and what it saves on AdamW's.
    shape["optimizer_bytes"] = optimizer_state_bytes(config, trainable=trainable, optimizer=values["optimizer"],
                                                     galore_rank=values["galore_rank"])
    saved = trainable * 8 - shape["optimizer_bytes"]
    if method.side_network_shape:  # a backbone without gradients keeps none of its activations for backward
        shape["side_network"] = method.side_network_shape(config_from_dict(method.params, method_params), config)
    need = estimate_training_memory(config, trainable=trainable, total=total, task=task,
                                    four_bit_base=method.four_bit_base, **shape)
    available = pool_memory_bytes(pool)
    result = {"need_gib": need.total / 2**30,
              "parts": {k: v / 2**30 for k, v in need.to_dict().items() if k != "total"},
              "pool": pool, "available_gib": available / 2**30 if available else None, "fits": True,
              "optimizer_saved_mib": saved / 2**20 if saved > 0 else None}
    if shape.get("side_network"):  # what backpropagating through the model would have kept
        through = estimate_training_memory(config, trainable=trainable, total=total, task=task,
                                           **{**shape, "side_network": None})
        result["activations_saved_mib"] = max(through.activations - need.activations, 0) / 2**20
    if available and need.total > available:
        result["fits"] = False
        result["changes"] = changes_that_fit(config, available=available, trainable=trainable, total=total,
                                             gpu=bool(gpu_pools), task=task, **shape)
    speed = pool_tokens_per_s(pool, base_model_id=base_model.pk)
    rows_per_step = values["batch_size"] * values["gradient_accumulation"]
    steps = values.get("max_steps") or (math.ceil(dataset.row_count / rows_per_step) * values["epochs"]
                                        if dataset else None)
    if speed and steps:
        # An upper bound: every row counted at max length (a preference or reward row is two sequences).
        sequences = rows_per_step * (2 if task in ("preference", "reward") else 1)
        result["minutes"] = steps * sequences * values["max_length"] / speed / 60
        result["tokens_per_s"] = speed
    return result


def _count(n: int) -> str:
    """4_910_000 -> "4.9 M", 139_000_000 -> "139 M"."""
    for unit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= unit:
            return f"{n / unit:.1f} {suffix}" if n < 10 * unit else f"{n / unit:.0f} {suffix}"
    return str(n)


def memory_refusal(*, base_model, config: TrainConfig, dataset, gpu_pools) -> str:
    """Why no alive worker of the run's pool can hold it, with what would fit
    ("" when one can, and when that cannot be known yet: the counts are not
    in, or no worker of the pool is alive, and the job may wait for one)."""
    try:
        estimate = train_estimate(base_model=base_model, method=METHODS[config.method], task=config.task,
                                  method_params=config.method_params, run_values=config_to_dict(config),
                                  dataset=dataset, gpu_pools=gpu_pools)
    except ModelError:
        return ""  # check_against_model reports an unreadable model
    if estimate is None or estimate.preflight.get("fits", True):
        return ""
    preflight = estimate.preflight
    changes = "; or ".join(preflight.get("changes") or []) or "a smaller model or a pool with larger devices"
    return (f"needs ≈ {preflight['need_gib']:.1f} GiB, more than the {preflight['available_gib']:.0f} GiB of the "
            f"largest worker of pool {preflight['pool']}; try: {changes}")
