"""Prefix tuning: trained key/value prefixes for every attention layer
(Li & Liang, 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
Generation", arXiv:2101.00190), through peft.

peft passes the prefixes as ``past_key_values``, so the model's forward must
accept them: causal LMs do; encoder classifiers such as BERT or MiniLM in
current transformers do not, and ``check`` refuses them. peft also refuses
prefix tuning with gradient checkpointing (its table row says so).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import dry_run, peft_task_type, presets


@dataclass(frozen=True, kw_only=True)
class PrefixTuningParams:
    num_virtual_tokens: int = setting(20, help="Length of the prefix, in positions, added to every attention "
                                               "layer's keys and values.", min=1, max=1024, basic=True,
                                      label="Prefix length")
    init: str = setting("zero", help="How the prefix starts: zero keys and values barely change the model at "
                                     "first (on the bundled model a random prefix starts at many times the "
                                     "loss); random is peft's default.", choices=("zero", "random"),
                        label="Initialisation")
    projection: bool = setting(False, help="Reparameterise the prefix through a two-layer MLP, as the paper does "
                                           "for stable training; only the resulting prefix is used at inference.",
                               label="MLP reparameterisation")
    projection_size: int = setting(512, help="Hidden size of that MLP.", min=1, max=65536)


PRESETS = presets(quick=(0.01, {"num_virtual_tokens": 16}),
                  balanced=(0.005, {"num_virtual_tokens": 20}),
                  thorough=(0.003, {"num_virtual_tokens": 30}))


def prepare(model, params: PrefixTuningParams, context=None):
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(num_virtual_tokens=params.num_virtual_tokens, prefix_projection=params.projection,
                                init_weights="zero" if params.init == "zero" else None,
                                encoder_hidden_size=params.projection_size,
                                task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: PrefixTuningParams, model_config, task: str) -> dict[str, str]:
    import inspect

    model, problems = dry_run(prepare, params, model_config, task, blame="num_virtual_tokens")
    if model is not None:
        base = model.get_base_model()
        if "past_key_values" not in inspect.signature(type(base).forward).parameters:
            return {"method": f"prefix tuning needs a model that accepts past key/values; {type(base).__name__} "
                              f"does not. Choose prompt tuning or P-tuning for this model"}
    return problems
