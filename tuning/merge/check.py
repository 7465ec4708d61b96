"""``check_merge_sources(config)``: refuse sources that cannot be merged,
before a job is queued. Cheap by design: it reads config files,
safetensors headers and tokenizers, never weights. Every refusal is a
ConfigError naming the source and the tensor, setting or token at fault."""

from __future__ import annotations

import json
from pathlib import Path

from tuning.errors import ConfigError
from tuning.merge.sources import Source, resolve_sources
from tuning.merge.tensors import ADAPTER_CONFIG, ADAPTER_WEIGHTS, lora_updates, model_header, read_header
from tuning.merge.table import MERGE_METHODS

# Settings that must agree for two models to share tensor layouts and meaning.
ARCHITECTURE_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "vocab_size", "tie_word_embeddings")


def check_merge_sources(config) -> None:

    method = MERGE_METHODS[config.method]
    sources = resolve_sources(config)
    base = Path(config.base_model)
    base_config = _read_json(base / "config.json")
    base_header = model_header(base)
    for index, source in enumerate(sources):
        field = f"sources.{index}"
        if source.kind == "adapter" and source.base.resolve() != base.resolve():
            _check_architecture(base, base_config, source.base, f"{field}.base")
            _check_tensors(base, base_header, source.base, model_header(source.base), f"{field}.base")
        if source.kind == "model":
            if method.group != "models":
                raise ConfigError({field: f"{source.path} is a full model; {method.label} takes adapter directories "
                                          f"(with adapter_config.json)"})
            _check_architecture(base, base_config, source.path, field)
            _check_tensors(base, base_header, source.path, model_header(source.path), field)
        else:
            if method.group == "adapters" and source.base.resolve() != base.resolve():
                raise ConfigError({f"{field}.base": f"{source.path} was trained on {source.base}, not on the base "
                                                    f"model {base}: combined adapters must share one base"})
            _check_adapter_shapes(source, model_header(source.base), field)
        _check_vocabulary(base, source, field, config.trust_remote_code)
    if method.group == "adapters":
        _check_adapters_agree(sources, same_rank=method.same_rank)
    if method.check_sources is not None and (refusals := method.check_sources(sources, base)):
        raise ConfigError(refusals)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError({"sources": f"cannot read {path}: {exc}"}) from None


def _check_architecture(base: Path, base_config: dict, other: Path, field: str) -> None:
    other_config = _read_json(other / "config.json")
    for key in ARCHITECTURE_KEYS:
        if base_config.get(key) != other_config.get(key):
            raise ConfigError({field: f"{key} is {other_config.get(key)!r} in {other} but {base_config.get(key)!r} "
                                      f"in the base model {base}: only models of the same architecture and size "
                                      f"merge"})


def _check_tensors(base: Path, base_header: dict, other: Path, other_header: dict, field: str) -> None:
    missing = sorted(set(base_header) - set(other_header))
    extra = sorted(set(other_header) - set(base_header))
    if missing or extra:
        name, where = (missing[0], f"is in {base} but not in {other}") if missing else \
            (extra[0], f"is in {other} but not in {base}")
        raise ConfigError({field: f"{name} {where} ({len(missing)} missing, {len(extra)} extra tensors): the models "
                                  f"do not share one layout"})
    for name, (_, shape) in base_header.items():
        other_shape = other_header[name][1]
        if shape != other_shape:
            raise ConfigError({field: f"{name} has shape {_shape(other_shape)} in {other} but {_shape(shape)} in "
                                      f"{base}: only models of the same size merge"})


def _shape(shape: tuple) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _adapter_config(source: Source) -> dict:
    return _read_json(source.path / ADAPTER_CONFIG)


def _adapter_header(source: Source) -> dict:
    path = source.path / ADAPTER_WEIGHTS
    if not path.exists():
        raise ConfigError({"sources": f"{source.path} has no {ADAPTER_WEIGHTS}: adapters are read from safetensors "
                                      f"only; re-save it with save_pretrained(safe_serialization=True)"})
    return read_header(path)


def _check_adapter_shapes(source: Source, base_header: dict, field: str) -> None:
    """A LoRA update B·A must have the shape of the weight it changes."""
    if _adapter_config(source).get("peft_type") != "LORA":
        return  # other types are folded by peft, which checks them itself
    header = _adapter_header(source)
    try:
        updates = lora_updates(list(header))
    except ValueError:
        return  # an unfamiliar tensor (e.g. trainable tokens): peft folds it and checks it
    for name, (kind, keys) in updates.items():
        if name not in base_header:
            raise ConfigError({field: f"{source.path} changes {name}, which the base model {source.base} does not "
                                      f"have: the adapter belongs to another model"})
        if kind == "replace":
            shape = header[keys[0]][1]
        else:
            (_, cols), (rows, _) = header[keys[0]][1], header[keys[1]][1]
            shape = (cols, rows) if kind == "embedding" else (rows, cols)
        if shape != base_header[name][1] and tuple(reversed(shape)) != base_header[name][1]:
            raise ConfigError({field: f"{name} has shape {_shape(base_header[name][1])} in {source.base} but the "
                                      f"adapter {source.path} updates it with shape {_shape(shape)}"})


def _check_adapters_agree(sources: list[Source], *, same_rank: bool) -> None:
    first = sources[0]
    first_config, first_targets = _adapter_config(first), _lora_modules(first)
    for index, source in enumerate(sources[1:], start=1):
        config = _adapter_config(source)
        if config.get("peft_type") != "LORA" or first_config.get("peft_type") != "LORA":
            raise ConfigError({f"sources.{index}": f"only LoRA adapters can be combined; {source.path} is "
                                                   f"{config.get('peft_type')}, {first.path} is "
                                                   f"{first_config.get('peft_type')}"})
        targets = _lora_modules(source)
        if targets != first_targets:
            differ = sorted(targets ^ first_targets)[0]
            raise ConfigError({f"sources.{index}": f"{differ} is adapted in only one of {first.path} and "
                                                   f"{source.path}: combined adapters must target the same modules"})
        if same_rank and config.get("r") != first_config.get("r"):
            raise ConfigError({f"sources.{index}": f"{source.path} has rank {config.get('r')} but {first.path} has "
                                                   f"rank {first_config.get('r')}: this combination needs equal "
                                                   f"ranks; use cat or svd for adapters of different ranks"})


def _lora_modules(source: Source) -> set[str]:
    return {key.split(".lora_")[0] for key in _adapter_header(source) if ".lora_" in key}


def _vocabulary(directory: Path, trust_remote_code: bool) -> dict[str, int] | None:
    """The tokenizer's token → id map, or None when the directory has no
    tokenizer. Read from tokenizer.json where there is one (no transformers
    import, which keeps the check cheap in the web process)."""
    if (directory / "tokenizer.json").exists():
        data = _read_json(directory / "tokenizer.json")
        vocab = data.get("model", {}).get("vocab") or {}
        if isinstance(vocab, list):  # Unigram: [[token, score], ...] in id order
            vocab = {entry[0]: index for index, entry in enumerate(vocab)}
        return {**vocab, **{token["content"]: token["id"] for token in data.get("added_tokens", [])}}
    if not any((directory / name).exists() for name in ("tokenizer_config.json", "tokenizer.model")):
        return None
    from tuning.models import load_tokenizer

    return load_tokenizer(str(directory), trust_remote_code=trust_remote_code).get_vocab()


def _same_file(one: Path, other: Path) -> bool:
    import filecmp

    return one.is_file() and other.is_file() and filecmp.cmp(one, other, shallow=False)


def _check_vocabulary(base: Path, source: Source, field: str, trust_remote_code: bool) -> None:
    """The output takes the base's tokenizer, so each source's must match it token for token."""
    if _same_file(base / "tokenizer.json", source.path / "tokenizer.json"):
        return  # the usual case, a copy of the base's: no need to parse megabytes of JSON twice
    other = _vocabulary(source.path, trust_remote_code)
    if other is None:
        return  # no tokenizer of its own: it uses its base's
    vocabulary = _vocabulary(base, trust_remote_code)
    if other == vocabulary:
        return
    for token, token_id in sorted(vocabulary.items(), key=lambda item: item[1]):
        if other.get(token) != token_id:
            where = f"id {other[token]}" if token in other else "no id"
            raise ConfigError({field: f"token {token!r} has id {token_id} in {base} but {where} in {source.path}: "
                                      f"the tokenizers differ ({len(vocabulary)} vs {len(other)} tokens), so the "
                                      f"models cannot be merged"})
    token = sorted(set(other) - set(vocabulary), key=lambda t: other[t])[0]
    raise ConfigError({field: f"token {token!r} (id {other[token]}) is in {source.path} but not in {base}: the "
                              f"tokenizers differ ({len(vocabulary)} vs {len(other)} tokens), so the models cannot "
                              f"be merged"})
