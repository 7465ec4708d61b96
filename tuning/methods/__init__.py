"""The fine-tuning methods the studio offers: one file per method, one row here.

A method declares a parameters dataclass (its fields drive the form, the
CLI and validation) and ``prepare(model, params, context)``, which returns
the model with only the method's parameters trainable (wrapped by peft, or
the plain model with some parameters frozen). Optional hooks:

- ``param_groups(model, params, base_lr)``: optimizer parameter groups,
  for methods that give parts of the model their own learning rate
  (LoRA+, layer-wise learning-rate decay). Default: one group.
- ``check(params, model_config, task)``: impossible combinations, as
  ``{field: message}``, refused before a job is queued. Most checks
  prepare the method on a weightless ("meta") copy of the model, so what
  peft would refuse at the start of a job is refused on the form instead.
- ``load_kwargs(params)``: extra ``from_pretrained`` arguments for the base
  model (QLoRA loads it in 4 bits).
- ``on_step(model, step)``: called after every optimizer step, before the
  gradients are zeroed, with the 1-based step (AdaLoRA reallocates ranks).
- ``export(model, directory)``: writes the final output. Default:
  ``model.save_pretrained(directory)``. LoRA uses it to turn PiSSA, OLoRA
  and CorDA adapters (trained against a modified base) into plain LoRA
  adapters that load on the unmodified base model.

``produces`` says what the run saves: "adapter" (peft ``save_pretrained``,
reloaded with ``PeftModel.from_pretrained``) or "model" (a full
transformers model directory).

Nothing here imports torch or peft at import time: the web process reads
this table to draw the form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from tuning.methods import (adalora, bitfit, boft, fourierft, full, hft, hra, ia3, llrd, ln_tuning, loha, lokr, lora,
                            oft, p_tuning, prefix_tuning, prompt_tuning, qlora, randlora, road, top_k, vblora,
                            vera)

GROUPS = {
    "full": "Full fine-tuning",
    "low-rank": "Low-rank adapters",
    "orthogonal": "Orthogonal and rotation adapters",
    "scaling": "Scaling and vector adapters",
    "prompts": "Prompt and prefix tuning",
    "selective": "Selective fine-tuning",
}
TASKS = ("sft", "pretrain", "classify")


@dataclass(frozen=True)
class MethodContext:
    """What ``prepare`` may need beyond the model: the task, the device,
    calibration batches (dicts of tensors without labels, already on the
    device) for data-driven initialisations such as EVA and CorDA, the
    number of optimizer steps the run will take (AdaLoRA schedules its rank
    budget over it) and the base model reference (prompt tuning's text
    initialisation loads its tokenizer)."""

    task: str = "sft"
    device: str = "cpu"
    calibration_batches: Callable[[], Iterable[dict]] = lambda: iter(())
    total_steps: int = 0
    base_model: str = ""


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    group: str  # a key of GROUPS
    description: str  # one line, shown in the UI
    paper: str  # link to the paper
    params: type
    prepare: Callable[[Any, Any, MethodContext], Any]
    produces: str = "adapter"  # "adapter" or "model"
    tasks: tuple[str, ...] = TASKS
    needs_gpu: bool = False
    # False where peft refuses gradient checkpointing (prefix tuning), so a
    # run asking for both can be refused on the form.
    gradient_checkpointing: bool = True
    resumable: bool = True  # False where the method keeps state outside its weights that checkpoints lack
    # True where the wrapped model adds a term of its own to the loss it
    # returns (AdaLoRA's orthogonality penalty), so the loss must come from
    # the model's forward with labels.
    loss_from_model: bool = False
    param_groups: Callable[[Any, Any, float], list[dict]] | None = None
    check: Callable[[Any, Any, str], dict[str, str]] | None = None
    load_kwargs: Callable[[Any], dict] | None = None
    on_step: Callable[[Any, int], None] | None = None
    export: Callable[[Any, Any], None] | None = None
    # Named settings that work on the bundled model: {"quick": {...}, ...};
    # keys are TrainConfig fields, or "method_params" with a dict.
    presets: dict[str, dict] = field(default_factory=dict)


def _row(module, **row) -> Method:
    """A table row whose hooks are the functions of that name in ``module``."""
    hooks = ("prepare", "param_groups", "check", "load_kwargs", "on_step", "export")
    return Method(**{hook: getattr(module, hook) for hook in hooks if hasattr(module, hook)},
                  presets=getattr(module, "PRESETS", {}), **row)


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        _row(full, name="full", label="Full fine-tuning", group="full", produces="model",
             description="Updates every weight of the model; the most capable and the most memory-hungry.",
             paper="https://arxiv.org/abs/1801.06146", params=full.FullParams),
        _row(lora, name="lora", label="LoRA", group="low-rank",
             description="Trains small low-rank matrices beside the frozen weights; options for rsLoRA, DoRA, "
                         "LoRA+ and PiSSA/OLoRA/CorDA/EVA initialisation.",
             paper="https://arxiv.org/abs/2106.09685", params=lora.LoraParams),
        _row(qlora, name="qlora", label="QLoRA", group="low-rank", needs_gpu=True,
             description="LoRA on a base model quantized to 4-bit NF4, for large models on one GPU.",
             paper="https://arxiv.org/abs/2305.14314", params=qlora.QloraParams),
        _row(adalora, name="adalora", label="AdaLoRA", group="low-rank",
             description="LoRA in SVD form that moves rank from unimportant layers to important ones while training.",
             paper="https://arxiv.org/abs/2303.10512", params=adalora.AdaloraParams,
             resumable=False,  # its rank allocator's importance scores are not checkpointed
             loss_from_model=True),
        _row(loha, name="loha", label="LoHa", group="low-rank",
             description="Low-rank Hadamard product: two low-rank pairs multiplied elementwise, higher effective rank.",
             paper="https://arxiv.org/abs/2108.06098", params=loha.LohaParams),
        _row(lokr, name="lokr", label="LoKr", group="low-rank",
             description="Low-rank Kronecker product update; very few parameters for a full-rank update.",
             paper="https://arxiv.org/abs/2309.14859", params=lokr.LokrParams),
        _row(vera, name="vera", label="VeRA", group="low-rank",
             description="One frozen random low-rank pair shared by all layers; trains only two scaling vectors "
                         "per layer.",
             paper="https://arxiv.org/abs/2310.11454", params=vera.VeraParams),
        _row(vblora, name="vblora", label="VB-LoRA", group="low-rank",
             description="Builds every low-rank matrix from a small shared bank of vectors; tiny adapters.",
             paper="https://arxiv.org/abs/2405.15179", params=vblora.VbloraParams),
        _row(randlora, name="randlora", label="RandLoRA", group="low-rank",
             description="Full-rank update from frozen random low-rank bases with trained diagonal scalings.",
             paper="https://arxiv.org/abs/2502.00987", params=randlora.RandloraParams),
        _row(oft, name="oft", label="OFT", group="orthogonal",
             description="Multiplies each weight by a learned block-diagonal orthogonal matrix, preserving its "
                         "geometry.",
             paper="https://arxiv.org/abs/2306.07280", params=oft.OftParams),
        _row(boft, name="boft", label="BOFT", group="orthogonal",
             description="Orthogonal fine-tuning with butterfly-factorised rotations: denser with fewer parameters.",
             paper="https://arxiv.org/abs/2311.06243", params=boft.BoftParams),
        _row(hra, name="hra", label="HRA", group="orthogonal",
             description="Adapts each weight by a chain of Householder reflections.",
             paper="https://arxiv.org/abs/2405.17484", params=hra.HraParams),
        _row(road, name="road", label="RoAd", group="orthogonal",
             description="Rotates pairs of output features by learned 2-D rotations; very few parameters.",
             paper="https://arxiv.org/abs/2409.00119", params=road.RoadParams),
        _row(ia3, name="ia3", label="IA3", group="scaling",
             description="Learns vectors that rescale keys, values and feed-forward activations.",
             paper="https://arxiv.org/abs/2205.05638", params=ia3.Ia3Params),
        _row(fourierft, name="fourierft", label="FourierFT", group="scaling",
             description="Learns a few spectral coefficients per layer; the update is their inverse Fourier "
                         "transform.",
             paper="https://arxiv.org/abs/2405.03003", params=fourierft.FourierftParams),
        _row(ln_tuning, name="ln_tuning", label="LN tuning", group="scaling",
             description="Trains only the normalisation layers' scales (and biases).",
             paper="https://arxiv.org/abs/2312.11420", params=ln_tuning.LnTuningParams),
        _row(prompt_tuning, name="prompt_tuning", label="Prompt tuning", group="prompts",
             description="Learns soft prompt embeddings prepended to every input; the model stays frozen.",
             paper="https://arxiv.org/abs/2104.08691", params=prompt_tuning.PromptTuningParams),
        _row(prefix_tuning, name="prefix_tuning", label="Prefix tuning", group="prompts", gradient_checkpointing=False,
             description="Learns key/value prefixes for every attention layer.",
             paper="https://arxiv.org/abs/2101.00190", params=prefix_tuning.PrefixTuningParams),
        _row(p_tuning, name="p_tuning", label="P-tuning", group="prompts",
             description="Soft prompts produced by a small trained encoder (MLP or LSTM).",
             paper="https://arxiv.org/abs/2103.10385", params=p_tuning.PTuningParams),
        _row(bitfit, name="bitfit", label="BitFit", group="selective", produces="model",
             description="Trains only the bias terms (for models that have them).",
             paper="https://arxiv.org/abs/2106.10199", params=bitfit.BitfitParams),
        _row(top_k, name="top_k", label="Top-k layers", group="selective", produces="model",
             description="Trains only the top k transformer blocks (and the final norm and head); the rest stays "
                         "frozen.",
             paper="https://arxiv.org/abs/1911.03090", params=top_k.TopKParams),
        _row(hft, name="hft", label="Half fine-tuning", group="selective", produces="model",
             description="Freezes a seeded half of each block's modules to keep more of what the model knew.",
             paper="https://arxiv.org/abs/2404.18466", params=hft.HftParams),
        _row(llrd, name="llrd", label="Layer-wise LR decay", group="selective", produces="model",
             description="Full fine-tuning whose learning rate shrinks layer by layer towards the embeddings.",
             paper="https://arxiv.org/abs/2006.05987", params=llrd.LlrdParams),
    )
}


def describe(method: Method) -> dict:
    """The catalogue entry of a method as plain data (CLI, API, UI)."""
    from tuning.config import field_specs

    fields = [{"name": s.name, "label": s.label, "type": s.type.__name__, "default": s.default, "help": s.help,
               "min": s.min, "max": s.max, "choices": list(s.choices) if s.choices else None, "basic": s.basic}
              for s in field_specs(method.params)]
    return {"name": method.name, "label": method.label, "group": method.group, "description": method.description,
            "paper": method.paper, "produces": method.produces, "tasks": list(method.tasks),
            "needs_gpu": method.needs_gpu, "gradient_checkpointing": method.gradient_checkpointing, "params": fields,
            "presets": method.presets}

