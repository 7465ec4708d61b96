"""The fine-tuning methods the studio offers: one file per method, one row here.

A method has a parameters dataclass (its fields drive the form, the CLI
and validation) and ``prepare(model, params)``, which returns the model
with only the method's parameters trainable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tuning.methods import lora


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    group: str
    description: str
    paper: str
    params: type
    prepare: Callable
    produces: str  # artifact kind: "adapter" (peft) or "model" (full weights)
    needs_gpu: bool = False


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(name="lora", label="LoRA", group="low-rank",
               description="Trains small low-rank matrices beside the frozen attention and MLP weights.",
               paper="https://arxiv.org/abs/2106.09685", params=lora.LoraParams, prepare=lora.prepare,
               produces="adapter"),
    )
}
