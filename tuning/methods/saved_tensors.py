"""The output of the methods that no stock library loads (bottleneck
adapters, Ladder Side-Tuning): the trained tensors in
``adapter_model.safetensors`` and a JSON file, named by the method, holding
the method's name, its settings and the base model. Loading prepares the
method again on the base (same settings, so the same module names and
shapes) and puts the tensors back; ``tuning.loading.load_artifact`` does
this for the playground and evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

from tuning.errors import ModelError
from tuning.fields import config_from_dict

WEIGHTS_FILE = "adapter_model.safetensors"


def export_trained(model, directory, *, config_file: str, method: str, settings: dict) -> None:
    """Write every trainable tensor of ``model`` and ``config_file``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    save_file(tensors, directory / WEIGHTS_FILE)
    (directory / config_file).write_text(json.dumps({
        "method": method, "settings": settings,
        "base_model_name_or_path": getattr(model.config, "name_or_path", "")}, indent=2))


def attach_trained(model, directory, *, config_file: str, prepare, params_class):
    """Prepare the method saved in ``directory`` on ``model`` (the base it
    was trained on, loaded for the same task) and load its tensors; frozen."""
    from safetensors.torch import load_file

    directory = Path(directory)
    saved = json.loads((directory / config_file).read_text())
    prepare(model, config_from_dict(params_class, saved["settings"]))
    tensors = load_file(directory / WEIGHTS_FILE)
    unexpected = model.load_state_dict(tensors, strict=False).unexpected_keys
    if unexpected:
        raise ModelError(f"{directory.name} does not fit this base model: it holds {', '.join(unexpected[:3])}")
    return model.requires_grad_(False)
