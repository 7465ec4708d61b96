"""The fine-tuning methods the studio offers: one file per method, one row here.

A method declares a parameters dataclass (its fields drive the form, the
CLI and validation) and ``prepare(model, params, context)``, which returns
the model with only the method's parameters trainable (wrapped by peft, or
the plain model with some parameters frozen). Optional hooks:

- ``param_groups(model, params, base_lr)``: optimizer parameter groups,
  for methods that give parts of the model their own learning rate
  (LoRA+, layer-wise learning-rate decay). Default: one group.
- ``check(params, model_config, task)``: impossible combinations, as
  ``{field: message}``, refused before a job is queued.

``produces`` says what the run saves: "adapter" (peft ``save_pretrained``,
reloaded with ``PeftModel.from_pretrained``) or "model" (a full
transformers model directory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from tuning.methods import lora

GROUPS = {
    "full": "Full fine-tuning",
    "low-rank": "Low-rank adapters",
    "orthogonal": "Orthogonal and rotation adapters",
    "scaling": "Scaling and vector adapters",
    "prompts": "Prompt and prefix tuning",
    "selective": "Selective fine-tuning",
}
TASKS = ("sft", "pretrain", "classify")


@dataclass(frozen=True)
class MethodContext:
    """What ``prepare`` may need beyond the model: the task, the device,
    and calibration batches (dicts of tensors, already on the device) for
    data-driven initialisations such as EVA and CorDA."""

    task: str = "sft"
    device: str = "cpu"
    calibration_batches: Callable[[], Iterable[dict]] = lambda: iter(())


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    group: str  # a key of GROUPS
    description: str  # one line, shown in the UI
    paper: str  # link to the paper
    params: type
    prepare: Callable[[Any, Any, MethodContext], Any]
    produces: str = "adapter"  # "adapter" or "model"
    tasks: tuple[str, ...] = TASKS
    needs_gpu: bool = False
    param_groups: Callable[[Any, Any, float], list[dict]] | None = None
    check: Callable[[Any, Any, str], dict[str, str]] | None = None
    # Named settings that work on the bundled model: {"quick": {...}, ...};
    # keys are TrainConfig fields, or "method_params" with a dict.
    presets: dict[str, dict] = field(default_factory=dict)


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(name="lora", label="LoRA", group="low-rank",
               description="Trains small low-rank matrices beside the frozen attention and MLP weights.",
               paper="https://arxiv.org/abs/2106.09685", params=lora.LoraParams, prepare=lora.prepare),
    )
}
