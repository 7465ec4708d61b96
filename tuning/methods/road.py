"""RoAd: rotates pairs of each layer's output features by learned 2-D
rotations with learned scales (Liao et al., 2024, "3-in-1: 2D Rotary
Adaptation for Efficient Finetuning, Efficient Batching and
Composability", arXiv:2409.00119), through peft."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.common import peft_task_type, presets, refusals, target_modules_setting, targets


@dataclass(frozen=True, kw_only=True)
class RoadParams:
    variant: str = setting("road_1", help="road_1: one angle and scale shared by each pair (fewest parameters); "
                                          "road_2: two per pair; road_4: four per pair (most expressive).",
                           choices=("road_1", "road_2", "road_4"), basic=True, label="Variant")
    group_size: int = setting(64, help="Output features per rotation group; even, and must divide the output "
                                       "size of every targeted layer.", min=2, max=8192)
    target_modules: str = target_modules_setting()


PRESETS = presets(quick=(0.005, {"variant": "road_1"}),
                  balanced=(0.003, {"variant": "road_2"}),
                  thorough=(0.002, {"variant": "road_4"}))


def prepare(model, params: RoadParams, context=None):
    from peft import RoadConfig, get_peft_model

    config = RoadConfig(variant=params.variant, group_size=params.group_size,
                        target_modules=targets(params.target_modules),
                        task_type=peft_task_type(context))
    return get_peft_model(model, config)


def check(params: RoadParams, model_config, task: str) -> dict[str, str]:
    if params.group_size % 2:
        return {"group_size": "must be even: features are rotated in pairs"}
    return refusals(prepare, params, model_config, task, blame="group_size")
