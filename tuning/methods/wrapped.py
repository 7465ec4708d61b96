"""What the methods that wrap a model's linear layers themselves share
(ETHER, S²FT): finding the linear layers of the transformer blocks that a
target-modules setting names, swapping a wrapper in for each, freezing
everything but the wrappers' own parameters (and a classifier's new head),
and, at export, folding every wrapper back into a plain ``nn.Linear`` so that
the output is a stock transformers model directory.

A wrapper is any module with a ``base`` linear layer and a ``folded()``
method returning the plain linear layer that computes what it does.
"""

from __future__ import annotations

from tuning.errors import ConfigError
from tuning.methods.base import CLASSIFIER_TASKS
from tuning.methods.blocks import blocks_problems, head_parameters, train_only, transformer_blocks
from tuning.methods.common import meta_model, targets


def block_linears(model, target_modules: str, *, blame: str = "target_modules") -> list[str]:
    """Full names of the ``nn.Linear`` layers inside the transformer blocks
    that ``target_modules`` names ("all-linear", or module names such as
    "q_proj,v_proj"); the output and classification heads are never among
    them. Refuses, under ``blame``, a setting that names nothing."""
    import torch

    prefix, blocks = transformer_blocks(model)
    wanted = targets(target_modules)
    found = [f"{prefix}.{name}" for name, module in blocks.named_modules()
             if isinstance(module, torch.nn.Linear)
             and (wanted in ("all-linear", None) or name.rpartition(".")[2] in wanted)]
    if not found:
        raise ConfigError({blame: f"names no linear layer of {type(model).__name__}'s transformer blocks "
                                  f"(got {target_modules!r})"})
    return found


def swap_in(model, names: list[str], wrap) -> list:
    """Replace each named module by ``wrap(name, module)``; the wrappers, in order."""
    wrappers = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        wrapper = wrap(name, getattr(parent, child))
        setattr(parent, child, wrapper)
        wrappers.append(wrapper)
    return wrappers


def train_wrappers(model, wrappers: list, context, *, also: frozenset[str] = frozenset()) -> object:
    """Freeze everything but the wrappers' own parameters (their ``base``
    layers stay frozen), the parameters named in ``also`` and, for a
    classifier, its new head."""
    own = {id(p) for wrapper in wrappers for name, p in wrapper.named_parameters() if not name.startswith("base.")}
    names = {name for name, p in model.named_parameters() if id(p) in own}
    head = head_parameters(model) if context is not None and context.task in CLASSIFIER_TASKS else set()
    return train_only(model, names | head | also)


def fold_wrappers(model) -> int:
    """Put each wrapper's plain folded linear layer in its place; how many."""
    names = [name for name, module in model.named_modules() if hasattr(module, "folded") and hasattr(module, "base")]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, getattr(parent, child).folded())
    return len(names)


def export_folded(model, directory) -> None:
    """The export hook of a folding method: fold in place (the model goes on
    computing the same function) and save a plain model directory."""
    import torch

    with torch.no_grad():
        fold_wrappers(model)
    model.save_pretrained(directory, safe_serialization=True)


def wrapped_problems(prepare, params, model_config, task: str) -> dict[str, str]:
    """The check hook of a wrapping method: prepare it on a meta model and
    report what it refuses ({field: message}); nothing is read or allocated."""
    problems = blocks_problems(model_config, task)
    if problems:
        return problems
    try:
        prepare(meta_model(model_config, task), params)
    except ConfigError as exc:
        return exc.errors
    return {}
