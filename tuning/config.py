"""Run configurations: frozen, keyword-only dataclasses.

The field machinery (``setting``, ``field_specs``, ``config_from_dict``)
lives in ``tuning.fields``, which the methods' parameter classes use too;
this module reads the method table to validate ``method_params``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tuning.errors import ConfigError
from tuning.fields import FieldSpec, coerce, config_from_dict, config_to_dict, field_specs, setting
from tuning.methods import METHODS
from tuning.models import MODEL_CODE_LOCK, load_model_config

# Re-exported: the studio's services build and dump configs through this module.
__all__ = ["MAX_GOLDEN_PROMPTS", "FieldSpec", "TrainConfig", "check_against_model", "config_from_dict",
           "config_to_dict", "field_specs", "setting"]


MAX_GOLDEN_PROMPTS = 8  # each is generated at every checkpoint: keep the cost bounded


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """A supervised fine-tuning run. Method-specific settings live in
    ``method_params`` and are validated by the method's own dataclass."""

    base_model: str = setting(help="Local model directory or hub id of the base model.")
    base_model_name: str = setting("", help="Name recorded in the model card and adapter config "
                                            "(defaults to base_model).")
    dataset_path: str = setting(help="JSONL or CSV file of instruction/response rows.")
    dataset_name: str = setting("", help="Name recorded in the model card.")
    dataset_sha256: str = setting("", help="Content hash recorded in the model card.")
    output_dir: str = setting(help="Directory for checkpoints and the final adapter.")
    task: str = setting("sft", help="What to train: sft (instruction/chat data, loss on responses), pretrain "
                                    "(continued pre-training on plain text) or classify (text + label).",
                        choices=("sft", "pretrain", "classify"), basic=True)
    method: str = setting("lora", help="Fine-tuning method (see `python -m tuning methods`).", basic=True)
    method_params: dict = field(default_factory=dict)
    # Prompts answered at the start and at every checkpoint, so a user sees
    # how the answers change; a list, checked in from_dict (like method_params).
    golden_prompts: list = field(default_factory=list)
    golden_max_new_tokens: int = setting(48, help="Tokens generated per golden prompt at each checkpoint.", min=1,
                                         max=1024)
    learning_rate: float = setting(2e-4, help="Peak learning rate (AdamW); 0 trains nothing, which measures the "
                                              "base model's eval loss.", min=0.0, max=1.0, basic=True,
                                   label="Learning rate")
    epochs: float = setting(1.0, help="Passes over the data (ignored when max steps is set).", min=0.01,
                            max=1000.0, basic=True)
    max_steps: int = setting(0, help="Stop after this many optimizer steps; 0 means use epochs.", min=0,
                             max=10_000_000, basic=True, label="Max steps")
    batch_size: int = setting(4, help="Rows per step.", min=1, max=4096, basic=True)
    max_length: int = setting(512, help="Tokens per row; longer rows are truncated.", min=8, max=131072,
                              basic=True, label="Max length (tokens)")
    gradient_accumulation: int = setting(1, help="Micro-batches per optimizer step.", min=1, max=1024)
    warmup_ratio: float = setting(0.03, help="Fraction of steps spent warming up the learning rate.",
                                  min=0.0, max=0.5)
    scheduler: str = setting("cosine", help="Learning-rate schedule after warm-up.",
                             choices=("cosine", "linear", "constant"))
    weight_decay: float = setting(0.0, help="AdamW weight decay.", min=0.0, max=1.0)
    max_grad_norm: float = setting(1.0, help="Clip gradients to this norm; 0 turns clipping off.", min=0.0,
                                   max=1000.0)
    precision: str = setting("auto", help="Compute precision: auto picks bf16 where the device computes it "
                                          "natively (else fp32 on a CPU).",
                             choices=("auto", "fp32", "bf16", "fp16"))
    gradient_checkpointing: bool = setting(False, help="Recompute activations in the backward pass: less "
                                                       "memory, about a third slower.")
    validation_ratio: float = setting(0.0, help="Fraction of rows held out for evaluation (0: no evaluation).",
                                      min=0.0, max=0.5)
    eval_every: int = setting(0, help="Evaluate every N steps (0: only at the end); needs a validation split.",
                              min=0, max=10_000_000)
    early_stopping_patience: int = setting(0, help="Stop after this many evaluations without a lower eval loss "
                                                   "(0: never stop early).", min=0, max=1000)
    load_best_at_end: bool = setting(False, help="Save the checkpoint with the lowest eval loss as the output, "
                                                 "instead of the last step.")
    resume_from: str = setting("", help="Checkpoint directory to continue from (model, optimizer, scheduler and "
                                        "data position); 'latest' picks the newest one in output_dir.")
    packing: bool = setting(True, help="Pack each batch's rows end to end without padding (each row still "
                                       "attends only to itself); faster on data of mixed lengths. Turned off "
                                       "automatically where the method or model cannot use it.")
    group_by_length: bool = setting(False, help="Batch rows of similar length together, so padded batches waste "
                                                "less; only matters when packing is off or unavailable.")
    cache_dir: str = setting("", help="Directory for cached tokenized datasets (empty: .token-cache beside the "
                                      "output directory).")
    loss_on_prompt: bool = setting(False, help="Also train on the prompt tokens (default: responses only).")
    seed: int = setting(42, help="Random seed for shuffling and initialisation.", min=0, max=2**31 - 1)
    save_every: int = setting(100, help="Write a checkpoint every N steps.", min=1, max=10_000_000)
    keep_checkpoints: int = setting(2, help="How many recent checkpoints to keep.", min=1, max=100)
    trust_remote_code: bool = setting(False, help="Run model code shipped with the model (off unless an "
                                                  "admin allows it).")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        method_params = data.pop("method_params", None) or {}
        golden_prompts = data.pop("golden_prompts", None) or []
        errors = {}
        config = None
        try:
            config = config_from_dict(cls, data)
        except ConfigError as exc:
            errors.update(exc.errors)
        if (not isinstance(golden_prompts, (list, tuple)) or len(golden_prompts) > MAX_GOLDEN_PROMPTS
                or not all(isinstance(p, str) and p.strip() and len(p) <= 4000 for p in golden_prompts)):
            errors["golden_prompts"] = (f"give at most {MAX_GOLDEN_PROMPTS} prompts, each a non-empty text of at "
                                        f"most 4000 characters")
        method = METHODS.get(data.get("method", "lora"))
        if method is None:
            errors["method"] = f"unknown method '{data.get('method')}'; known: {', '.join(sorted(METHODS))}"
        elif _truthy(data.get("gradient_checkpointing")) and not method.gradient_checkpointing:
            errors["gradient_checkpointing"] = f"{method.label} does not work with gradient checkpointing; turn it off"
        elif data.get("task", "sft") not in method.tasks:
            errors["task"] = (f"{method.label} does not support the task '{data.get('task')}'; it supports: "
                              f"{', '.join(method.tasks)}")
        if method is not None:
            try:
                params = config_from_dict(method.params, method_params, prefix="method_params.")
                method_params = config_to_dict(params)
            except ConfigError as exc:
                errors.update(exc.errors)
        if errors:
            raise ConfigError(errors)
        return dataclasses.replace(config, method_params=method_params,
                                   golden_prompts=[p.strip() for p in golden_prompts])


def _truthy(value) -> bool:
    try:
        return coerce(value, bool)
    except ValueError:
        return False  # reported by config_from_dict


def check_against_model(config: TrainConfig, *, on_worker: bool = True) -> None:
    """Refuse settings the chosen base model makes impossible (a rank larger
    than a layer, a method the architecture lacks parts for …), reading only
    the model's config file. Raises ConfigError naming the field.

    The web process (``on_worker=False``) has no GPU of its own: a GPU-only
    method's own check, which looks at this machine's devices, runs on the
    worker instead."""
    with MODEL_CODE_LOCK:
        _check_against_model(config, on_worker=on_worker)


def _check_against_model(config: TrainConfig, *, on_worker: bool) -> None:
    method = METHODS[config.method]
    model_config = load_model_config(config.base_model, trust_remote_code=config.trust_remote_code)
    architectures = getattr(model_config, "architectures", None) or []
    if config.task in ("sft", "pretrain") and architectures and not any(
            name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        raise ConfigError({"base_model": f"{architectures[0]} is not a generative (causal) language model; use it "
                                         f"for the classify task, or pick a causal LM for {config.task}"})
    if method.check is None or (method.needs_cuda and not on_worker):
        return
    params = method.params(**config.method_params)
    problems = method.check(params, model_config, config.task)
    if problems:
        raise ConfigError({f"method_params.{name}" if name in config.method_params else name: message
                           for name, message in problems.items()})
