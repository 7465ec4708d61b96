"""Settings declared once: a dataclass field's metadata (help, min, max,
choices, basic) is what the CLI, the web forms and validation all read.

``config_from_dict`` rejects unknown keys and reports every bad field at
once, so a user fixes a form in one go. Every config class (TrainConfig,
the methods' parameters, merge and quantize configs) is built on this
module; it imports nothing else of ``tuning`` but its errors, so imports
point one way: config -> methods -> fields.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from tuning.errors import ConfigError

LARGEST_INT = 2**63 - 1


def setting(default: Any = dataclasses.MISSING, *, help: str, min=None, max=None, choices=None,
            basic: bool = False, label: str = "", multiline: bool = False) -> Any:
    """A dataclass field with the metadata forms and validation read.

    ``basic`` settings are shown up front in the UI; the rest sit under
    "Advanced". ``multiline`` text gets a text area in forms.
    """
    metadata = {"help": help, "min": min, "max": max, "choices": choices, "basic": basic, "label": label,
                "multiline": multiline}
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
    multiline: bool = False


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
            multiline=meta.get("multiline", False),
        ))
    return specs


def describe_fields(cls) -> list[dict]:
    """The settings of a config class as plain data (the catalogues' JSON)."""
    return [{"name": s.name, "label": s.label, "type": s.type.__name__, "default": s.default, "help": s.help,
             "min": s.min, "max": s.max, "choices": list(s.choices) if s.choices else None, "basic": s.basic}
            for s in field_specs(cls)]


def _base_type(hint) -> type:
    """``float | None`` -> ``float``; plain types pass through."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def coerce(value: Any, kind: type) -> Any:
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
            number = int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
        except (TypeError, ValueError):
            raise ValueError("must be a whole number") from None
        if not -LARGEST_INT <= number <= LARGEST_INT:  # torch and the database hold 64-bit integers
            raise ValueError(f"must be a whole number between {-LARGEST_INT} and {LARGEST_INT}")
        return number
    if kind is float:
        if isinstance(value, bool):
            raise ValueError("must be a number")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ValueError("must be a number") from None
        if not math.isfinite(number):  # NaN, ±inf, and 1e400 (which float() makes inf)
            raise ValueError("must be a finite number")
        return number
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
            value = coerce(data[name], spec.type)
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
