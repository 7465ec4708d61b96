"""How many parameters a method would train on a model, from the model's
config alone: the method is prepared on a weightless ("meta") copy, so no
weights are read and even a large model takes well under a second. Feeds
the trainable-parameter figure next to each method in the UI.

Methods whose initialisation reads weights or data (PiSSA, OLoRA, CorDA,
EVA, prompt tuning from text) are estimated with their default
initialisation, which has the same shapes; EVA may then move rank between
layers, so its real count can differ a little. QLoRA's total counts
parameters, not the 4-bit storage.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from tuning.fields import config_from_dict, config_to_dict
from tuning.methods import METHODS, MethodContext
from tuning.methods.common import DRY_RUN_STEPS, count_parameters, meta_model
from tuning.methods.memory import model_dims


def estimate_trainable_parameters(model_config, method_name: str, params_dict: dict,
                                  task: str = "sft") -> tuple[int, int]:
    """(trainable, total) parameters of ``method_name`` with ``params_dict``
    on the model described by ``model_config`` (a transformers config)."""
    method = METHODS[method_name]
    params = config_from_dict(method.params, params_dict, prefix="method_params.")
    context = MethodContext(task=task, device="meta", total_steps=DRY_RUN_STEPS)
    return count_parameters(method.prepare(meta_model(model_config, task), params, context))


def estimate_key(method_name: str, params_dict: dict, task: str) -> str:
    """What a stored count is filed under: the method's settings with its
    defaults filled in, so the same run gives the same key however its
    settings were written (raises ConfigError for a bad setting)."""
    params = config_from_dict(METHODS[method_name].params, params_dict, prefix="method_params.")
    return f"{task}:{method_name}:{json.dumps(config_to_dict(params), sort_keys=True, default=str)}"


def model_shape(model_config) -> dict:
    """The few numbers of a model's config the memory estimate reads, as plain
    data that can be stored and read back without transformers."""
    hidden, layers, heads, vocab = model_dims(model_config)
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads, "vocab_size": vocab}


def shape_config(shape: dict) -> SimpleNamespace:
    """A stored ``model_shape`` as the config object the memory estimate takes."""
    return SimpleNamespace(**shape)
