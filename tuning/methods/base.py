"""What a fine-tuning method is: the ``Method`` row of the table in
``tuning.methods``, with its hooks and capability flags, and the context
``prepare`` receives. Imports nothing of ``tuning`` so that the method
files, their helpers and the table all import it one way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

GROUPS = {
    "full": "Full fine-tuning",
    "low-rank": "Low-rank adapters",
    "orthogonal": "Orthogonal and rotation adapters",
    "scaling": "Scaling and vector adapters",
    "bottleneck": "Bottleneck adapters",
    "side": "Side networks",
    "prompts": "Prompt and prefix tuning",
    "selective": "Selective fine-tuning",
}
TASKS = ("sft", "pretrain", "classify", "preference", "reward", "grpo")
# Methods that cannot score preference pairs: virtual tokens shift every position the
# reply log-probabilities are read from (nor a reward model's last token).
NOT_PREFERENCE = ("sft", "pretrain", "classify")
# The tasks whose model is a sequence classifier (a head scoring each row) rather than a causal LM:
# classify (one label per row) and reward (one score per reply, tuning.reward).
CLASSIFIER_TASKS = ("classify", "reward")


@dataclass(frozen=True)
class MethodContext:
    """What ``prepare`` may need beyond the model: the task, the device,
    calibration batches (dicts of tensors without labels, already on the
    device) for data-driven initialisations such as EVA and CorDA, the
    number of optimizer steps the run will take (AdaLoRA schedules its rank
    budget over it) and the base model reference (prompt tuning's text
    initialisation loads its tokenizer)."""

    task: str = "sft"
    device: str = "cpu"
    calibration_batches: Callable[[], Iterable[dict]] = lambda: iter(())
    total_steps: int = 0
    base_model: str = ""


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
    # Capabilities: what the training loop, the new-job form, its estimate and
    # the API read about a method, so that none of them tests a method's name
    # or group. Listed in CAPABILITIES, which ``describe`` reports.
    needs_cuda: bool = False  # only a CUDA GPU can run it (bitsandbytes); refused on a studio without GPU workers
    packs_rows: bool = True  # rows of a batch may be packed end to end (virtual tokens cannot be shared)
    # The loss is a causal LM's over the rows' own tokens, one prediction per
    # token; False where virtual tokens sit in front of every row, which
    # rules out the fused head+loss and segment attention.
    predicts_each_token: bool = True
    folds_into_base: bool = False  # its adapter can be merged into the base weights (the "fold" step)
    four_bit_base: bool = False  # the frozen base is loaded in 4 bits (memory estimate, load_kwargs)
    # It trains the model's own linear weight matrices in place, whose gradients GaLore projects (full
    # fine-tuning, some layers of it); not adapters, biases (BitFit), reflections (ETHER) or column updates (S²FT).
    trains_weight_matrices: bool = False
    # The frozen linear weights are only ever read inside a matmul, so under
    # bf16 autocast they may be stored in bf16 once (see tuning.train_model).
    frozen_base_in_bf16: bool = False
    # False where peft refuses gradient checkpointing (prefix tuning), so a
    # run asking for both can be refused on the form.
    gradient_checkpointing: bool = True
    # False where the method keeps state outside its weights that checkpoints
    # lack; a method with such state declares the ``training_state`` and
    # ``restore_training_state`` hooks instead.
    resumable: bool = True
    # What the ``penalty`` hook's term is called on the job page's chart.
    penalty_label: str = ""
    param_groups: Callable[[Any, Any, float], list[dict]] | None = None
    check: Callable[[Any, Any, str], dict[str, str]] | None = None
    load_kwargs: Callable[[Any], dict] | None = None
    on_step: Callable[[Any, int], None] | None = None
    grow: Callable[[Any, int, Any], list[str]] | None = None
    export: Callable[[Any, Any], None] | None = None
    penalty: Callable[[Any], Any] | None = None
    training_state: Callable[[Any], tuple[dict, dict]] | None = None
    restore_training_state: Callable[[Any, dict, dict], None] | None = None
    # (width, heads) of a side network trained beside a backbone that runs without gradients (Ladder
    # Side-Tuning) from (params, model config): the memory estimate keeps no backbone activations then.
    side_network_shape: Callable[[Any, Any], tuple[int, int]] | None = None
    # Named settings that work on the bundled model: {"quick": {...}, ...};
    # keys are TrainConfig fields, or "method_params" with a dict.
    presets: dict[str, dict] = field(default_factory=dict)

CAPABILITIES = ("needs_cuda", "packs_rows", "predicts_each_token", "folds_into_base", "four_bit_base",
                "frozen_base_in_bf16", "gradient_checkpointing", "resumable", "trains_weight_matrices")
HOOKS = ("prepare", "param_groups", "check", "load_kwargs", "on_step", "grow", "export", "penalty", "training_state",
         "restore_training_state", "side_network_shape")


def method_row(module, **row) -> Method:
    """A table row whose hooks are the functions of those names in
    ``module`` and whose presets are its ``PRESETS``; ``row`` holds the
    rest (name, label, group, params, capabilities)."""
    return Method(**{hook: getattr(module, hook) for hook in HOOKS if hasattr(module, hook)},
                  presets=getattr(module, "PRESETS", {}), **row)
