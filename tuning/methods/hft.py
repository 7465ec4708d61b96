"""Half fine-tuning (HFT): freeze half of the parameters so the model keeps
more of what it knew (Hui et al., 2024, "HFT: Half Fine-Tuning for Large
Language Models", arXiv:2404.18466).

Following the paper's category-wise choice, the halving is done per group of
sibling modules in each block (the attention projections, the MLP
projections, the block's norms): half of each group trains, picked with
the seed. An odd group alternates between rounding up and down, so about
half of all block modules train. The paper re-draws the half each training
round; here it is drawn once, so a run is one fixed selection. Embeddings
stay frozen; a classifier's new head trains. The output is a whole model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tuning.fields import setting
from tuning.methods.base import CLASSIFIER_TASKS
from tuning.methods.blocks import blocks_problems, head_parameters, train_only, transformer_blocks
from tuning.methods.common import presets


@dataclass(frozen=True, kw_only=True)
class HftParams:
    seed: int = setting(0, help="Seed choosing which half of each block's modules trains.", min=0,
                        max=2**31 - 1, basic=True)


PRESETS = presets(quick=(0.0001, {}), balanced=(5e-05, {}), thorough=(3e-05, {}))


def chosen_modules(blocks, seed: int) -> list[str]:
    """Names (relative to the block list, e.g. "0.self_attn.q_proj") of the
    modules that train."""
    rng, round_up, chosen = random.Random(seed), False, []
    for index, block in enumerate(blocks):
        groups: dict[str, list[str]] = {}
        for name, module in block.named_modules():
            if name and any(True for _ in module.parameters(recurse=False)):
                groups.setdefault(name.rpartition(".")[0], []).append(name)
        for names in groups.values():
            count = len(names) // 2
            if len(names) % 2:
                count, round_up = count + round_up, not round_up
            chosen += [f"{index}.{name}" for name in rng.sample(names, count)]
    return chosen


def prepare(model, params: HftParams, context=None):
    prefix, blocks = transformer_blocks(model)
    modules = {f"{prefix}.{name}" for name in chosen_modules(blocks, params.seed)}
    names = {name for name, _ in model.named_parameters() if name.rpartition(".")[0] in modules}
    head = head_parameters(model) if context and context.task in CLASSIFIER_TASKS else set()
    return train_only(model, names | head)


def check(params: HftParams, model_config, task: str) -> dict[str, str]:
    return blocks_problems(model_config, task)
