"""MergeConfig: one merge run (folding an adapter, combining adapters,
merging whole models). Method-specific settings live in ``method_params``
and are validated by the method's own dataclass, like TrainConfig."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from tuning.fields import config_from_dict, config_to_dict, setting
from tuning.errors import ConfigError
from tuning.merge.table import MERGE_METHODS

DTYPES = ("auto", "fp32", "bf16", "fp16")
SOURCE_KEYS = ("path", "weight", "base")


@dataclass(frozen=True, kw_only=True)
class MergeConfig:
    method: str = setting(help="Merge method (see `python -m tuning merge-methods`).", basic=True)
    sources: list = field(default_factory=list)  # [{"path", "weight"?, "base"?}], checked by from_dict
    base_model: str = setting(help="Local directory of the common base model: the origin of task vectors, the "
                                   "model adapters are folded into, and where the tokenizer is copied from.",
                              basic=True)
    method_params: dict = field(default_factory=dict)
    output_dir: str = setting(help="Directory the run writes its output (model/ or adapter/) into.")
    dtype: str = setting("auto", help="Dtype of the saved weights: auto keeps the base model's; the arithmetic "
                                      "itself always runs in fp32.", choices=DTYPES, basic=True)
    dataset_path: str = setting("", help="Fisher merging and aTLAS only: JSONL or CSV file (instruction/response "
                                         "rows) the Fisher information is estimated on, or aTLAS's coefficients "
                                         "learn on.")
    max_length: int = setting(512, help="Fisher merging and aTLAS only: tokens per row; longer rows are truncated.",
                              min=8, max=131072)
    fisher_batches: int = setting(64, help="Fisher merging only: rows used to estimate each model's Fisher "
                                           "information (one gradient per row, as in the paper).", min=1,
                                  max=1_000_000)
    trust_remote_code: bool = setting(False, help="Run model code shipped with the models (off unless an admin "
                                                  "allows it).")

    @classmethod
    def from_dict(cls, data: dict) -> "MergeConfig":

        data = dict(data)
        method_params = data.pop("method_params", None) or {}
        sources = data.pop("sources", None)
        errors: dict[str, str] = {}
        config = None
        try:
            config = config_from_dict(cls, data)
        except ConfigError as exc:
            errors.update(exc.errors)
        sources = _sources(sources, errors)
        method = MERGE_METHODS.get(data.get("method") or "")
        if method is None:
            errors["method"] = (f"unknown merge method '{data.get('method')}'; known: "
                                f"{', '.join(sorted(MERGE_METHODS))}")
        else:
            method_params = _method_params(method, method_params, len(sources), errors)
            _count(method, len(sources), errors)
            if method.needs_dataset and not data.get("dataset_path"):
                errors["dataset_path"] = f"{method.label} {method.dataset_use}: pick a dataset"
        if errors:
            raise ConfigError(errors)
        return dataclasses.replace(config, sources=sources, method_params=method_params)


def _sources(sources, errors: dict) -> list[dict]:
    """Each source as {"path", "weight", "base"} with defaults filled in."""
    if not isinstance(sources, list) or not sources:
        errors["sources"] = "list at least one model or adapter directory to merge"
        return []
    clean = []
    for index, source in enumerate(sources):
        where = f"sources.{index}"
        if isinstance(source, str):
            source = {"path": source}
        if not isinstance(source, dict):
            errors[where] = "must be a directory path or a mapping with path, weight and base"
            continue
        unknown = set(source) - set(SOURCE_KEYS)
        if unknown:
            errors[where] = f"unknown keys {', '.join(sorted(unknown))}; a source has: {', '.join(SOURCE_KEYS)}"
            continue
        if not source.get("path") or not isinstance(source["path"], str):
            errors[f"{where}.path"] = "is required (the model or adapter directory)"
            continue
        try:
            weight = 1.0 if source.get("weight") in (None, "") else float(source["weight"])
        except (TypeError, ValueError):
            errors[f"{where}.weight"] = "must be a number"
            continue
        clean.append({"path": source["path"], "weight": weight, "base": str(source.get("base") or "")})
    return clean


def _method_params(method, method_params: dict, n_sources: int, errors: dict) -> dict:
    try:
        params = config_from_dict(method.params, method_params, prefix="method_params.")
    except ConfigError as exc:
        errors.update(exc.errors)
        return method_params
    if method.check is not None:
        errors.update({f"method_params.{name}": message for name, message in method.check(params).items()})
    return config_to_dict(params)


def _count(method, n: int, errors: dict) -> None:
    if n and n < method.min_sources:
        errors["sources"] = f"{method.label} needs at least {method.min_sources} sources; {n} given"
    elif n and method.max_sources and n > method.max_sources:
        errors["sources"] = f"{method.label} takes at most {method.max_sources} sources; {n} given"
