"""The merge-method table: one row per merge method (see the package
docstring for what a method declares). Read by the web process to draw the
form: nothing here imports torch or peft at import time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tuning.merge import (atlas, breadcrumbs, dare, della, fisher, fold, lora_combine, model_stock, pcb, sce, slerp,
                          task_arithmetic, ties, wise_ft)

GROUPS = {
    "fold": "Fold an adapter into its base",
    "adapters": "Combine adapters into one adapter",
    "models": "Merge fine-tuned models",
}


@dataclass(frozen=True)
class MergeMethod:
    name: str
    label: str
    group: str  # a key of GROUPS
    description: str  # one or two sentences, shown in the UI
    paper: str  # "title, URL"
    params: type
    run: Callable[[Any], dict]
    produces: str  # "model" or "adapter"
    min_sources: int = 2
    max_sources: int | None = None
    merge_tensors: Callable | None = None  # the per-tensor rule (models group)
    check: Callable[[Any], dict[str, str]] | None = None
    same_rank: bool = False  # adapters group: every source must have one LoRA rank
    needs_dataset: bool = False  # Fisher merging estimates on data, aTLAS learns on it
    dataset_use: str = ""  # what it does with the dataset, for the form's label and the missing-dataset message
    presets: dict[str, dict] | None = None  # name -> settings a user can start from
    check_sources: Callable[[list, Any], dict[str, str]] | None = None  # (sources, base) -> {field: message}


def _model_row(module, **row) -> MergeMethod:
    return MergeMethod(group="models", produces="model", run=module.run, merge_tensors=module.merge_tensors,
                       check=getattr(module, "check", None), **{"presets": getattr(module, "PRESETS", None), **row})


def _adapter_row(combination: str, params: type, **row) -> MergeMethod:
    return MergeMethod(name=f"lora_{combination}", group="adapters", produces="adapter",
                       run=lora_combine.runner(combination), params=params,
                       same_rank=combination in lora_combine.SAME_RANK, **row)


ADAPTER_PAPER = "LoRA: Low-Rank Adaptation of Large Language Models, https://arxiv.org/abs/2106.09685"
TIES_PAPER = "TIES-Merging: Resolving Interference When Merging Models, https://arxiv.org/abs/2306.01708"
DARE_PAPER = ("Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free Lunch, "
              "https://arxiv.org/abs/2311.03099")
DELLA_PAPER = ("DELLA-Merging: Reducing Interference in Model Merging through Magnitude-Based Sampling, "
               "https://arxiv.org/abs/2406.11617")
WISE_FT_PAPER = "Robust fine-tuning of zero-shot models (WiSE-FT), https://arxiv.org/abs/2109.01903"

MERGE_METHODS: dict[str, MergeMethod] = {
    method.name: method
    for method in (
        MergeMethod(name="fold", label="Fold adapter into base", group="fold", produces="model", run=fold.run,
                    params=fold.FoldParams, min_sources=1, max_sources=1,
                    description="Adds an adapter's update to its base model's weights and saves a plain model that "
                                "runs without peft; exact, for every adapter type.",
                    paper=ADAPTER_PAPER),
        _adapter_row("linear", lora_combine.LinearParams, label="Linear (adapters)",
                     description="Weighted sums of the adapters' A and B matrices: fast and small, but only an "
                                 "approximation of the summed updates. Needs equal ranks.",
                     paper=ADAPTER_PAPER),
        _adapter_row("cat", lora_combine.CatParams, label="Concatenate (adapters)",
                     description="Stacks the adapters along the rank: exactly the weighted sum of their updates, "
                                 "with the ranks added up.",
                     paper=ADAPTER_PAPER),
        _adapter_row("svd", lora_combine.SvdParams, label="SVD (adapters)",
                     description="The exact weighted sum of the updates, compressed back to a chosen rank with an "
                                 "SVD.",
                     paper=ADAPTER_PAPER),
        _adapter_row("ties", lora_combine.TiesParams, label="TIES (adapters)",
                     description="TIES-Merging of the adapters: keep each one's largest entries, elect a sign per "
                                 "entry, average those that agree.",
                     paper=TIES_PAPER),
        _adapter_row("dare_linear", lora_combine.DareParams, label="DARE linear (adapters)",
                     description="Randomly drops entries of each adapter, rescales the rest, and sums them.",
                     paper=DARE_PAPER),
        _adapter_row("dare_ties", lora_combine.DareTiesParams, label="DARE TIES (adapters)",
                     description="DARE's random drop and rescale, then TIES' sign election and disjoint average.",
                     paper=DARE_PAPER),
        _adapter_row("magnitude_prune", lora_combine.PruneParams, label="Magnitude prune (adapters)",
                     description="Keeps each adapter's largest-magnitude entries and sums them.",
                     paper=TIES_PAPER),
        MergeMethod(name="lora_wise_ft", label="WiSE-FT (adapter)", group="adapters", produces="adapter",
                    run=wise_ft.run_adapter, params=wise_ft.WiseFtParams, min_sources=1, max_sources=1,
                    presets=wise_ft.PRESETS, check_sources=wise_ft.adapter_refusals,
                    description="Interpolates a LoRA adapter with its base by α through its scaling: the same "
                                "adapter with its update times α, exact and as small as the original.",
                    paper=WISE_FT_PAPER),
        _model_row(task_arithmetic, name="task_arithmetic", label="Task arithmetic",
                   params=task_arithmetic.TaskArithmeticParams, min_sources=1,
                   description="Adds the weighted differences between each model and the base (task vectors) to "
                               "the base; negative weights remove a skill.",
                   paper="Editing Models with Task Arithmetic, https://arxiv.org/abs/2212.04089"),
        _model_row(ties, name="ties", label="TIES", params=ties.TiesParams, min_sources=1,
                   description="Trims each task vector to its largest changes, elects a sign per parameter and "
                               "averages only the changes that agree, so conflicting models do not cancel out.",
                   paper=TIES_PAPER),
        _model_row(dare, name="dare_linear", label="DARE (linear)", params=dare.DareParams, min_sources=1,
                   description="Randomly drops most of each task vector, rescales the rest to keep its expected "
                               "value, and adds them up; the DAREx-q option rescales less at high drop rates.",
                   paper=DARE_PAPER + "; DARE the Extreme, https://arxiv.org/abs/2410.09344"),
        _model_row(dare, name="dare_ties", label="DARE (TIES)", params=dare.DareTiesParams, min_sources=1,
                   description="DARE's random drop and rescale followed by TIES' sign election and disjoint "
                               "average.",
                   paper=DARE_PAPER + "; DARE the Extreme, https://arxiv.org/abs/2410.09344",
                   presets={"papers": {"normalize": True}, "mergekit": {"normalize": False}}),
        _model_row(della, name="della", label="DELLA (TIES)", params=della.DellaParams, min_sources=1,
                   description="Like DARE, but each row keeps its large changes more often than its small ones "
                               "(MagPrune), then TIES' sign election and disjoint average.",
                   paper=DELLA_PAPER),
        _model_row(della, name="della_linear", label="DELLA (linear)", params=della.DellaLinearParams,
                   min_sources=1,
                   description="DELLA's magnitude-ranked random drop and rescale, then the weighted task vectors "
                               "are added up, without sign election.",
                   paper=DELLA_PAPER),
        _model_row(sce, name="sce", label="SCE", params=sce.SceParams,
                   description="Selects the positions where the models disagree most, weighs each model per "
                               "matrix by how much it changed it, and erases sign conflicts before averaging. "
                               "Source weights are not used.",
                   paper="FuseChat: Knowledge Fusion of Chat Models, https://arxiv.org/abs/2408.07990"),
        _model_row(wise_ft, name="wise_ft", label="WiSE-FT", params=wise_ft.WiseFtParams, min_sources=1,
                   max_sources=1,
                   description="Interpolates one fine-tune (or adapter, folded) with its base by α, keeping most "
                               "of its gain while recovering what the base did better; writes a full model.",
                   paper=WISE_FT_PAPER),
        _model_row(breadcrumbs, name="breadcrumbs", label="Model Breadcrumbs", params=breadcrumbs.BreadcrumbsParams,
                   min_sources=1,
                   description="Drops each layer's largest (outlier) and smallest (noise) changes and adds what "
                               "remains to the base.",
                   paper="Model Breadcrumbs: Scaling Multi-Task Model Merging with Sparse Masks, "
                         "https://arxiv.org/abs/2312.06795"),
        _model_row(model_stock, name="model_stock", label="Model Stock", params=model_stock.ModelStockParams,
                   description="Moves from the base towards the models' average by a ratio set per layer by the "
                               "angle between their changes; no settings. Source weights are not used.",
                   paper="Model Stock: All we need is just a few fine-tuned models, https://arxiv.org/abs/2403.19522"),
        _model_row(slerp, name="slerp", label="SLERP", params=slerp.SlerpParams, max_sources=2,
                   description="Interpolates two models along the arc between their weights, keeping their norm; "
                               "t picks the point between them. Source weights are not used.",
                   paper="Animating rotation with quaternion curves (Shoemake, 1985), "
                         "https://doi.org/10.1145/325165.325242"),
        _model_row(pcb, name="pcb", label="PCB merging", params=pcb.PcbParams, min_sources=1,
                   description="Scores every change by its importance within its model and its agreement with the "
                               "others, keeps the top-scoring ones and averages them by score. Source weights are "
                               "not used.",
                   paper="Parameter Competition Balancing for Model Merging, https://arxiv.org/abs/2410.02396"),
        _model_row(fisher, name="fisher", label="Fisher merging", params=fisher.FisherParams, min_sources=1,
                   needs_dataset=True, dataset_use="estimates Fisher information on data",
                   description="Averages the models parameter by parameter, each weighted by how much it matters "
                               "to its model (Fisher information estimated on a dataset you pick).",
                   paper="Merging Models with Fisher-Weighted Averaging, https://arxiv.org/abs/2111.09832"),
        _model_row(atlas, name="atlas", label="aTLAS (learned coefficients)", params=atlas.AtlasParams,
                   min_sources=1, needs_dataset=True, dataset_use="learns its coefficients on data",
                   check_sources=atlas.source_refusals,
                   description="Task arithmetic with one coefficient per tensor (or layer) and task vector, learned "
                               "by gradient descent on a few rows of a dataset you pick; the job page shows them.",
                   paper="Knowledge Composition using Task Vectors with Learned Anisotropic Scaling, "
                         "https://arxiv.org/abs/2407.08624"),
    )
}


def describe(method: MergeMethod) -> dict:
    """The catalogue entry of a merge method as plain data (CLI, API, UI)."""
    from tuning.fields import describe_fields

    fields = describe_fields(method.params)
    return {"name": method.name, "label": method.label, "group": method.group, "group_label": GROUPS[method.group],
            "description": method.description, "paper": method.paper, "produces": method.produces,
            "min_sources": method.min_sources, "max_sources": method.max_sources,
            "needs_dataset": method.needs_dataset,
            "dataset_use": method.dataset_use, "params": fields, "presets": method.presets or {}}
