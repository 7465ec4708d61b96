"""Prompt tuning: soft prompt embeddings prepended to every input, the only
trained parameters (Lester et al., 2021, "The Power of Scale for
Parameter-Efficient Prompt Tuning", arXiv:2104.08691), through peft.

Like every prompt method it lengthens each sequence by the virtual tokens:
peft extends the attention mask and pads the labels with -100 itself, and
the logits it returns have the virtual positions in front.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.errors import ConfigError
from tuning.methods.common import on_meta, peft_task_type, presets, refusals


@dataclass(frozen=True, kw_only=True)
class PromptTuningParams:
    num_virtual_tokens: int = setting(20, help="Length of the soft prompt, in tokens; each costs one hidden-size "
                                               "vector and one position of every sequence.", min=1, max=1024,
                                      basic=True, label="Virtual tokens")
    init: str = setting("vocab", help="How the soft prompt starts: vocab (embeddings of random vocabulary tokens, "
                                      "which the paper found better than random), text (the embeddings of the text "
                                      "below) or random.", choices=("vocab", "text", "random"),
                        label="Initialisation")
    init_text: str = setting("", help="Text init only: a description of the task, e.g. 'Answer the question "
                                      "politely:'; repeated or cut to the prompt length.", label="Initial text")


PRESETS = presets(quick=(0.03, {"num_virtual_tokens": 16}),
                  balanced=(0.02, {"num_virtual_tokens": 20}),
                  thorough=(0.01, {"num_virtual_tokens": 40}))
PEFT_INIT = {"vocab": "SAMPLE_VOCAB", "text": "TEXT", "random": "RANDOM"}


def prepare(model, params: PromptTuningParams, context=None):
    from peft import PromptTuningConfig, get_peft_model

    # On a meta model there are no embeddings to copy; random has the same shape.
    init = "random" if on_meta(model) else params.init
    if init == "text" and not (context and context.base_model):
        raise ConfigError({"method_params.init": "the text initialisation needs the base model's tokenizer"})
    config = PromptTuningConfig(
        num_virtual_tokens=params.num_virtual_tokens, prompt_tuning_init=PEFT_INIT[init],
        prompt_tuning_init_text=params.init_text if init == "text" else None,
        tokenizer_name_or_path=context.base_model if init == "text" else None,
        task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: PromptTuningParams, model_config, task: str) -> dict[str, str]:
    if params.init == "text" and not params.init_text.strip():
        return {"init_text": "is required for the text initialisation"}
    return refusals(prepare, params, model_config, task, blame="num_virtual_tokens")
