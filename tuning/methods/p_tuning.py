"""P-tuning: soft prompt embeddings produced by a small trained encoder (an
MLP or an LSTM) from trainable inputs (Liu et al., 2021, "GPT Understands,
Too", arXiv:2103.10385), through peft's prompt encoder. Only the encoder's
output is needed to run the model, but peft saves the encoder so training
can continue.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import peft_task_type, presets, refusals


@dataclass(frozen=True, kw_only=True)
class PTuningParams:
    num_virtual_tokens: int = setting(20, help="Length of the soft prompt, in tokens.", min=1, max=1024,
                                      basic=True, label="Virtual tokens")
    encoder: str = setting("mlp", help="The prompt encoder: mlp (two layers) or lstm (bidirectional LSTM and an "
                                       "MLP, as in the paper).", choices=("mlp", "lstm"), basic=True)
    encoder_hidden_size: int = setting(128, help="Hidden size of the prompt encoder.", min=1, max=65536)
    encoder_dropout: float = setting(0.0, help="Dropout inside the prompt encoder during training.", min=0.0,
                                     max=0.9)


PRESETS = presets(quick=(0.01, {"num_virtual_tokens": 16}),
                  balanced=(0.005, {"num_virtual_tokens": 20}),
                  thorough=(0.002, {"num_virtual_tokens": 30, "encoder": "lstm"}))


def prepare(model, params: PTuningParams, context=None):
    from peft import PromptEncoderConfig, get_peft_model

    config = PromptEncoderConfig(num_virtual_tokens=params.num_virtual_tokens,
                                 encoder_reparameterization_type=params.encoder.upper(),
                                 encoder_hidden_size=params.encoder_hidden_size,
                                 encoder_dropout=params.encoder_dropout,
                                 task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: PTuningParams, model_config, task: str) -> dict[str, str]:
    return refusals(prepare, params, model_config, task, blame="num_virtual_tokens")
