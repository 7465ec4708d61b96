"""aTLAS (Zhang et al., 2024, arXiv:2407.08624, "Knowledge Composition
using Task Vectors with Learned Anisotropic Scaling"): task arithmetic with
one coefficient per parameter block and task vector, learned by gradient
descent on a few rows of data instead of one λ for everything:

    θ_b = θ_base,b + λ · Σ_i c_i,b · τ_i,b        τ_i = θ_i − θ_base

A block is one parameter tensor (the paper's choice) or, with
``blocks="layer"``, every tensor of one transformer layer together (fewer
coefficients for very little data). The coefficients c start at the source
weights, so the start is exactly task arithmetic with those weights and λ:
zero steps give task arithmetic's output bit for bit (``merge_tensors``
computes it in the same order). Only the coefficients train: the model's
weights are a function of them (``torch.func.functional_call``).

Memory: the base model and every task vector are held in fp32 while
learning (about N + 2 copies of the model for N sources, plus one gradient
and the activations of a batch); the output is then written tensor by
tensor like the other merges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tuning.errors import ModelError
from tuning.events import LogEvent
from tuning.fields import setting
from tuning.merge.common import deltas_, scaling_setting, weighted_sum
from tuning.merge.stream import open_readers, stream_merge, weights_of

BLOCKS = ("tensor", "layer")
LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")  # "model.layers.3.mlp.up_proj.weight" -> "model.layers.3"


@dataclass(frozen=True, kw_only=True)
class AtlasParams:
    scaling: float = scaling_setting()
    steps: int = setting(20, help="Gradient steps on the coefficients (0 gives task arithmetic with the source "
                                  "weights).", min=0, max=10_000, basic=True, label="Steps")
    learning_rate: float = setting(0.05, help="Adam's learning rate for the coefficients (they start at the source "
                                              "weights, about 1).", min=0.0, max=10.0, basic=True,
                                   label="Learning rate")
    batch_size: int = setting(4, help="Rows per gradient step.", min=1, max=1024, label="Batch size")
    rows: int = setting(32, help="Rows of the dataset the coefficients learn on and the reported loss is measured "
                                 "on (shuffled with seed 0): a few, as in the paper's few-shot setting.", min=1,
                        max=100_000, label="Rows")
    blocks: str = setting("tensor", help="What gets its own coefficient per task vector: every parameter tensor "
                                         "(the paper's anisotropic scaling) or every transformer layer (fewer "
                                         "coefficients, for very little data).", choices=BLOCKS, label="Blocks")


PRESETS = {"few-shot": {"steps": 20, "learning_rate": 0.05, "rows": 32, "blocks": "tensor"},
           "tiny data": {"steps": 10, "learning_rate": 0.05, "rows": 8, "blocks": "layer"}}


def check(params: AtlasParams) -> dict[str, str]:
    if params.steps and params.scaling == 0:
        return {"scaling": "with λ = 0 the task vectors add nothing, so the coefficients get no gradient; use λ > 0"}
    return {}


def source_refusals(sources: list, base) -> dict[str, str]:
    """Task vectors are measured from the run's base: an adapter trained on another base would carry the
    difference between the two bases in every coefficient it learns."""
    for index, source in enumerate(sources):
        if source.kind == "adapter" and source.base.resolve() != base.resolve():
            return {f"sources.{index}.base": f"{source.path} was trained on {source.base}, not on the base model "
                                             f"{base}: aTLAS learns coefficients of task vectors from one base; merge "
                                             f"adapters of {base} (or fold this one and merge models of its base)"}
    return {}


def block_of(name: str, blocks: str) -> str:
    if blocks == "layer" and (match := LAYER.match(name)):
        return match.group(1)
    return name


def merge_tensors(base, tensors: list, weights: list[float], params, *, coefficients: list[float] | None = None):
    """θ_base + λ · Σ_i c_i τ_i for one tensor, with c_i this tensor's block's
    coefficients (the source weights when none were learned): task
    arithmetic's arithmetic, so equal coefficients give its result exactly."""
    merged = weighted_sum(deltas_(base, tensors), weights if coefficients is None else coefficients)
    return base.add_(merged, alpha=params.scaling)


def _rows(job) -> tuple[list, int]:
    from tuning.data.tasks import batches, load_task_data
    from tuning.models import load_tokenizer

    config = job.config
    tokenizer = load_tokenizer(config.base_model, trust_remote_code=config.trust_remote_code)
    data = load_task_data("sft", config.dataset_path, tokenizer=tokenizer, max_length=config.max_length)
    order = [batch[0] for batch in batches(data.items, batch_size=1, seed=0, epoch=0)]
    return order[:job.params.rows], tokenizer.pad_token_id


def parameter_blocks(model, blocks: str) -> tuple[dict[str, str], dict[str, str]]:
    """({parameter name: block}, {state-dict name: parameter name}): a tied
    weight (lm_head tied to the embeddings) is one parameter under two names."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    aliases = {key: names[id(value)] for key, value in model.state_dict(keep_vars=True).items()
               if id(value) in names}
    return {name: block_of(name, blocks) for name in names.values()}, aliases


def merged_parameters(base: dict, task_vectors: list[dict], index: dict, coefficients, scaling: float) -> dict:
    """{name: θ_base + λ · Σ_i c_i,b τ_i} as tensors that depend on ``coefficients`` (sources × blocks)."""
    import torch

    weights = coefficients.to(torch.float32)
    merged = {}
    for name, tensor in base.items():
        column = weights[:, index[name]]
        total = sum(column[i] * vectors[name] for i, vectors in enumerate(task_vectors))
        merged[name] = tensor + scaling * total
    return merged


def mean_loss(model, parameters: dict, batches: list) -> float:
    import torch
    from torch.func import functional_call

    total = rows = 0
    with torch.no_grad():
        for batch in batches:  # weighted by rows: the last batch may be smaller
            size = batch["input_ids"].shape[0]
            total += float(functional_call(model, parameters, args=(), kwargs=batch).loss) * size
            rows += size
    return total / rows


def learn(job, model, base: dict, task_vectors: list[dict], index: dict, start: list[float], batches: list):
    """Adam on the coefficients for ``job.params.steps`` steps over ``batches`` (cycled):
    (coefficients sources × blocks in float64, loss at the start, loss at the end)."""
    import torch
    from torch.func import functional_call

    params = job.params
    # float64, so that c starts at exactly the source weight and zero steps reproduce task arithmetic
    coefficients = torch.tensor(start, dtype=torch.float64)[:, None].repeat(1, len(set(index.values())))
    coefficients.requires_grad_(True)
    optimizer = torch.optim.Adam([coefficients], lr=params.learning_rate)
    loss_start = mean_loss(model, merged_parameters(base, task_vectors, index, coefficients, params.scaling), batches)
    job.sink.emit(LogEvent(message=f"aTLAS: loss {loss_start:.4f} on {len(batches)} batches with the starting "
                                   f"coefficients (task arithmetic)"))
    every = max(1, params.steps // 10)
    for step in range(1, params.steps + 1):
        job.check_stop()
        optimizer.zero_grad(set_to_none=True)
        parameters = merged_parameters(base, task_vectors, index, coefficients, params.scaling)
        loss = functional_call(model, parameters, args=(), kwargs=batches[(step - 1) % len(batches)]).loss
        loss.backward()
        optimizer.step()
        job.progress(step, params.steps, phase="Learning coefficients", unit="steps")
        if step % every == 0 or step == params.steps:
            job.sink.emit(LogEvent(message=f"aTLAS step {step}/{params.steps}: batch loss {loss.item():.4f}"))
    coefficients = coefficients.detach()
    loss_end = mean_loss(model, merged_parameters(base, task_vectors, index, coefficients, params.scaling), batches)
    return coefficients, loss_start, loss_end


def run(job) -> dict:
    import torch

    from tuning.data.tasks import collate_for_task
    from tuning.merge.tensors import ModelReader
    from tuning.models import load_causal_lm

    params, config = job.params, job.config
    rows, pad_token_id = _rows(job)
    collate = collate_for_task("sft", pad_token_id=pad_token_id)
    batches = [collate(rows[start:start + params.batch_size]) for start in range(0, len(rows), params.batch_size)]
    model = load_causal_lm(config.base_model, dtype=torch.float32, trust_remote_code=config.trust_remote_code)
    model.requires_grad_(False).eval()  # only the coefficients learn; no dropout
    block_by_name, aliases = parameter_blocks(model, params.blocks)
    blocks = list(dict.fromkeys(block_by_name.values()))
    column_of = {block: column for column, block in enumerate(blocks)}
    index = {name: column_of[block] for name, block in block_by_name.items()}  # parameter -> coefficient column
    stored = {aliases[key]: key for key in ModelReader(config.base_model).names() if key in aliases}
    missing = sorted(set(block_by_name) - set(stored))
    if missing:
        raise ModelError(f"{config.base_model} has no stored tensor for the parameter {missing[0]}: aTLAS reads "
                         f"each parameter's task vector by its name in the safetensors files")
    parameters = dict(model.named_parameters())
    base = {name: parameters[name].detach() for name in block_by_name}  # the model's own weights: no second copy
    readers = open_readers(job)
    task_vectors = [{name: source.get(stored[name]) - base[name] for name in block_by_name} for source in readers]
    weights = weights_of(job)
    job.sink.emit(LogEvent(message=f"aTLAS: learning {len(blocks)} coefficients per task vector "
                                   f"({params.blocks} blocks) on {len(rows)} rows of {config.dataset_path}"))
    coefficients, loss_start, loss_end = learn(job, model, base, task_vectors, index, weights, batches)
    del model, base, task_vectors
    learned = coefficients.tolist()  # python floats from float64: exact at zero steps
    job.sink.emit(LogEvent(message=f"aTLAS: loss {loss_start:.4f} → {loss_end:.4f} after {params.steps} steps"))

    def merge(name, base_tensor, tensors):
        parameter = aliases.get(name)
        if parameter is None or parameter not in index:  # not a parameter (a stored buffer): the start weights
            return merge_tensors(base_tensor, tensors, weights, params)
        column = index[parameter]
        return merge_tensors(base_tensor, tensors, weights, params,
                             coefficients=[learned[i][column] for i in range(len(weights))])

    report = {"blocks": params.blocks, "steps": params.steps, "rows": len(rows), "loss_start": loss_start,
              "loss_end": loss_end, "sources": [source.label for source in job.sources],
              # per block, each task vector's effective coefficient λ · c, at the start and learned
              "coefficients": [{"block": block, "per_source": [{"start": params.scaling * weight,
                                                                "learned": params.scaling * learned[i][column]}
                                                               for i, weight in enumerate(weights)]}
                               for column, block in enumerate(blocks)]}
    return {**stream_merge(job, merge), "atlas": report}
