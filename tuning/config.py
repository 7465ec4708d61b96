"""Run configurations: frozen, keyword-only dataclasses.

Each field's metadata (help, min, max, choices, basic) is the one
declaration that the CLI, the web form and validation all read.
``config_from_dict`` rejects unknown keys and reports every bad field at
once, so a user fixes a form in one go.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from tuning.errors import ConfigError


def setting(default: Any = dataclasses.MISSING, *, help: str, min=None, max=None, choices=None,
            basic: bool = False, label: str = "") -> Any:
    """A dataclass field with the metadata forms and validation read.

    ``basic`` settings are shown up front in the UI; the rest sit under
    "Advanced".
    """
    metadata = {"help": help, "min": min, "max": max, "choices": choices, "basic": basic, "label": label}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: type
    default: Any
    required: bool
    help: str
    label: str
    min: Any = None
    max: Any = None
    choices: tuple | None = None
    basic: bool = False


def field_specs(cls) -> list[FieldSpec]:
    """Describe the settings of a config class (for forms and the CLI)."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        specs.append(FieldSpec(
            name=f.name, type=_base_type(hints[f.name]), default=default, required=required,
            help=meta["help"], label=meta.get("label") or f.name.replace("_", " ").capitalize(),
            min=meta.get("min"), max=meta.get("max"),
            choices=tuple(meta["choices"]) if meta.get("choices") else None, basic=meta.get("basic", False),
        ))
    return specs


def _base_type(hint) -> type:
    """``float | None`` -> ``float``; plain types pass through."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _coerce(value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError("must be true or false")
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("must be a whole number")
        try:
            return int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
        except ValueError:
            raise ValueError("must be a whole number") from None
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError("must be a number") from None
    if kind is str:
        if not isinstance(value, (str, int, float)):
            raise ValueError("must be text")
        return str(value)
    return value


def config_from_dict(cls, data: dict, *, prefix: str = ""):
    """Build ``cls`` from plain data, validating against field metadata.

    Raises ConfigError listing every unknown key and every invalid value.
    """
    if not isinstance(data, dict):
        raise ConfigError({prefix.rstrip(".") or "config": "must be a mapping of settings"})
    specs = {spec.name: spec for spec in field_specs(cls)}
    errors: dict[str, str] = {}
    for key in data:
        if key not in specs:
            errors[prefix + key] = f"unknown setting; known settings are: {', '.join(sorted(specs))}"
    values = {}
    for name, spec in specs.items():
        if name not in data or data[name] is None or data[name] == "":
            if spec.required:
                errors[prefix + name] = "is required"
            continue
        try:
            value = _coerce(data[name], spec.type)
        except ValueError as exc:
            errors[prefix + name] = str(exc)
            continue
        if spec.min is not None and value < spec.min:
            errors[prefix + name] = f"must be at least {spec.min}"
        elif spec.max is not None and value > spec.max:
            errors[prefix + name] = f"must be at most {spec.max}"
        elif spec.choices and value not in spec.choices:
            errors[prefix + name] = f"must be one of: {', '.join(map(str, spec.choices))}"
        else:
            values[name] = value
    if errors:
        raise ConfigError(errors)
    return cls(**values)


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


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
    precision: str = setting("auto", help="Compute precision: auto picks bf16 where the device supports it.",
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
        from tuning.methods import METHODS

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
        return _coerce(value, bool)
    except ValueError:
        return False  # reported by config_from_dict


def check_against_model(config: TrainConfig, *, on_worker: bool = True) -> None:
    """Refuse settings the chosen base model makes impossible (a rank larger
    than a layer, a method the architecture lacks parts for …), reading only
    the model's config file. Raises ConfigError naming the field.

    The web process (``on_worker=False``) has no GPU of its own: a GPU-only
    method's own check, which looks at this machine's devices, runs on the
    worker instead."""
    from tuning.models import MODEL_CODE_LOCK

    with MODEL_CODE_LOCK:
        _check_against_model(config, on_worker=on_worker)


def _check_against_model(config: TrainConfig, *, on_worker: bool) -> None:
    from tuning.methods import METHODS
    from tuning.models import load_model_config

    method = METHODS[config.method]
    model_config = load_model_config(config.base_model, trust_remote_code=config.trust_remote_code)
    architectures = getattr(model_config, "architectures", None) or []
    if config.task in ("sft", "pretrain") and architectures and not any(
            name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        raise ConfigError({"base_model": f"{architectures[0]} is not a generative (causal) language model; use it "
                                         f"for the classify task, or pick a causal LM for {config.task}"})
    if method.check is None or (method.needs_gpu and not on_worker):
        return
    params = method.params(**config.method_params)
    problems = method.check(params, model_config, config.task)
    if problems:
        raise ConfigError({f"method_params.{name}" if name in config.method_params else name: message
                           for name, message in problems.items()})
