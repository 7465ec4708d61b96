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

from tuning.fields import config_from_dict
from tuning.methods import METHODS, MethodContext
from tuning.methods.common import DRY_RUN_STEPS, count_parameters, meta_model


def estimate_trainable_parameters(model_config, method_name: str, params_dict: dict,
                                  task: str = "sft") -> tuple[int, int]:
    """(trainable, total) parameters of ``method_name`` with ``params_dict``
    on the model described by ``model_config`` (a transformers config)."""
    method = METHODS[method_name]
    params = config_from_dict(method.params, params_dict, prefix="method_params.")
    context = MethodContext(task=task, device="meta", total_steps=DRY_RUN_STEPS)
    return count_parameters(method.prepare(meta_model(model_config, task), params, context))
