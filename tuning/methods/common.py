"""What the method files share: peft task types, target-module lists, and
the weightless ("meta") model that checks and estimates prepare a method
on. A meta model has every parameter's shape and no storage, so building
even a large one and wrapping it with peft takes well under a second and
no memory.

torch, transformers and peft are imported inside the functions: the web
process imports the method table without them.
"""

from __future__ import annotations

from tuning.fields import setting
from tuning.methods.base import CLASSIFIER_TASKS, MethodContext

TARGETS_HELP = ("Comma-separated module names to adapt (e.g. q_proj,v_proj), or 'all-linear' for every linear "
                "layer but the output head.")
DRY_RUN_STEPS = 1000  # a stand-in run length for methods that schedule over the run (AdaLoRA)


def peft_task_type(context) -> str:
    """peft's task type for the run's task (a MethodContext; None is SFT).
    SEQ_CLS also makes the new classification head trainable."""
    return "SEQ_CLS" if context is not None and context.task in CLASSIFIER_TASKS else "CAUSAL_LM"


def target_modules_setting(default: str = "all-linear", help: str = TARGETS_HELP):
    return setting(default, help=help)


def dropout_setting(default: float = 0.0):
    return setting(default, help="Dropout on the adapter input during training.", min=0.0, max=0.9)


def rank_dropout_setting():
    return setting(0.0, help="Dropout on the update's rank dimension during training (LyCORIS).", min=0.0, max=0.9)


def module_dropout_setting():
    return setting(0.0, help="Probability of skipping a layer's adapter in a training step (LyCORIS).", min=0.0,
                   max=0.9)


def presets(*, quick: tuple[float, dict], balanced: tuple[float, dict], thorough: tuple[float, dict]) -> dict:
    """The three named presets, each (learning rate, method settings), sized
    for the bundled 135M model on a CPU: quick is 60 steps to see the loss
    move, balanced two epochs, thorough four epochs with bigger batches."""
    runs = {"quick": ({"max_steps": 60, "batch_size": 4}, quick),
            "balanced": ({"epochs": 2, "batch_size": 4}, balanced),
            "thorough": ({"epochs": 4, "batch_size": 8}, thorough)}
    return {name: {**run, "learning_rate": lr, "method_params": method_params}
            for name, (run, (lr, method_params)) in runs.items()}


def targets(text: str) -> str | list[str] | None:
    """A target-modules setting for peft: "all-linear", "default" (None:
    peft's choice for the architecture, as in the method's paper) or names."""
    text = text.strip()
    if text in ("all-linear", "default"):
        return None if text == "default" else text
    return [name.strip() for name in text.split(",") if name.strip()]


def on_meta(model) -> bool:
    """True while checking or estimating: the model has shapes but no values,
    so nothing that reads weights (SVD, calibration) can run."""
    return next(model.parameters()).is_meta


def meta_model(model_config, task: str):
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if task in CLASSIFIER_TASKS else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(copy.deepcopy(model_config))


def dry_run(prepare, params, model_config, task: str, *, blame: str):
    """Prepare the method on a meta model: ``(model, {})``, or ``(None,
    {blame: reason})`` where peft or torch refuse this model (a block size
    that does not divide a layer, a target module that does not exist …)."""
    try:
        model = prepare(meta_model(model_config, task), params, MethodContext(task=task, device="meta",
                                                                            total_steps=DRY_RUN_STEPS))
    except Exception as exc:  # peft says ValueError/TypeError, torch RuntimeError: all mean "not on this model"
        return None, {blame: f"does not fit this model: {exc}"}
    return model, {}


def refusals(prepare, params, model_config, task: str, *, blame: str) -> dict[str, str]:
    return dry_run(prepare, params, model_config, task, blame=blame)[1]


def adapted_layers(model) -> list[tuple[str, int, int]]:
    """(name, in features, out features) of every layer peft adapted."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            base = module.get_base_layer()
            if hasattr(base, "in_features") and hasattr(base, "out_features"):
                layers.append((name.removeprefix("base_model.model."), base.in_features, base.out_features))
    return layers


def rank_problems(prepare, params, model_config, task: str, *, rank: int, field: str,
                  blame: str = "target_modules") -> dict[str, str]:
    """Refuse a rank larger than a targeted layer (the update could not use
    it, and SVD-based initialisations fail outright), and what the dry run
    refuses, under ``blame``."""
    model, problems = dry_run(prepare, params, model_config, task, blame=blame)
    layers = adapted_layers(model) if model is not None else []
    name, fan_in, fan_out = min(layers, key=lambda layer: min(layer[1:]), default=("", rank, rank))
    if rank > min(fan_in, fan_out):
        return {field: f"{rank} is larger than the targeted layer {name} ({fan_in} → {fan_out}); use at most "
                       f"{min(fan_in, fan_out)}, or leave that layer out of the target modules"}
    return problems


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total); shared tensors (tied embeddings) count once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
