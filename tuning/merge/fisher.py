"""Fisher merging (Matena & Raffel, 2022, arXiv:2111.09832): a weighted
average of the models in which each parameter is weighted by how much it
matters to its model, measured by the diagonal of the model's Fisher
information: θ_j = Σ_i λ_i F_i,j θ_i,j / Σ_i λ_i F_i,j (λ_i are the source
weights). F_i is estimated as the mean squared gradient of the language
modelling loss over rows of a dataset the user picks (the empirical
Fisher, one gradient per row).

Memory: estimating a Fisher needs one whole model with its gradients and
the running Fisher in memory (about three copies of the model in fp32),
one source at a time; each Fisher is written to a scratch file, and the
merge itself then streams tensor by tensor like the other methods.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.events import LogEvent
from tuning.merge.stream import stream_merge, weights_of


@dataclass(frozen=True, kw_only=True)
class FisherParams:
    fisher_floor: float = setting(1e-6, help="Added to every Fisher value, so parameters no row's gradient "
                                             "touched are plainly averaged instead of dividing by zero.",
                                  min=0.0, max=1.0, label="Fisher floor")


def merge_tensors(base, tensors: list, weights: list[float], params: FisherParams, *, fishers: list):
    import torch

    numerator = torch.zeros_like(tensors[0])
    denominator = torch.zeros_like(tensors[0])
    for tensor, weight, fisher in zip(tensors, weights, fishers):
        importance = fisher.add_(params.fisher_floor).mul_(weight)
        numerator.addcmul_(importance, tensor)
        denominator.add_(importance)
    return numerator.div_(denominator)


def _load_source_model(job, source):
    from peft import PeftModel

    from tuning.models import load_causal_lm

    trust = job.config.trust_remote_code
    if source.kind == "model":
        return load_causal_lm(str(source.path), trust_remote_code=trust)
    base = load_causal_lm(str(source.base), trust_remote_code=trust)
    return PeftModel.from_pretrained(base, str(source.path)).merge_and_unload(progressbar=False)


def _rows(job) -> list[dict]:
    from tuning.data.tasks import batches, collate_for_task, load_task_data
    from tuning.models import load_tokenizer

    config = job.config
    tokenizer = load_tokenizer(config.base_model, trust_remote_code=config.trust_remote_code)
    data = load_task_data("sft", config.dataset_path, tokenizer=tokenizer, max_length=config.max_length)
    collate = collate_for_task("sft", pad_token_id=tokenizer.pad_token_id)
    rows = []
    for batch in batches(data.items, batch_size=1, seed=0, epoch=0):
        if len(rows) == config.fisher_batches:
            break
        rows.append(collate(batch))
    return rows


def estimate_fisher(model, rows: list[dict], on_row=lambda: None) -> dict:
    """{parameter name: mean squared gradient} over ``rows`` (each a collated batch)."""
    import torch

    model.requires_grad_(True)  # a folded peft model comes back frozen
    named = list(model.named_parameters())
    fisher = {name: torch.zeros_like(p) for name, p in named}
    model.eval()  # no dropout: the gradient of the model as it will be used
    for row in rows:
        model.zero_grad(set_to_none=True)
        model(**row).loss.backward()
        for name, p in named:
            if p.grad is not None:
                fisher[name].addcmul_(p.grad, p.grad)
        on_row()
    return {name: value.div_(len(rows)) for name, value in fisher.items()}


def run(job) -> dict:
    from safetensors.torch import save_file

    from tuning.merge.tensors import TensorFile

    rows = _rows(job)
    total, done = len(rows) * len(job.sources), 0
    job.sink.emit(LogEvent(message=f"Estimating Fisher information on {len(rows)} rows of "
                                   f"{job.config.dataset_path} for each of {len(job.sources)} models"))
    files = []
    for index, source in enumerate(job.sources):
        model = _load_source_model(job, source)

        def on_row():
            nonlocal done
            done += 1
            job.check_stop()
            job.progress(done, total, phase="Estimating Fisher information", unit="rows")

        fisher = estimate_fisher(model, rows, on_row)
        del model
        path = job.work / f"fisher-{index}.safetensors"
        save_file({name: value.contiguous() for name, value in fisher.items()}, str(path))
        del fisher
        files.append(TensorFile(path))
    weights = weights_of(job)
    estimated = set.intersection(*(set(handle.keys()) for handle in files))

    def merge(name, base, tensors):
        import torch

        # A tensor without a Fisher (a buffer, a frozen parameter) is averaged by the source weights alone.
        fishers = ([handle.get_tensor(name) for handle in files] if name in estimated
                   else [torch.ones_like(base) for _ in files])
        return merge_tensors(base, tensors, weights, job.params, fishers=fishers)

    return {**stream_merge(job, merge), "fisher_rows": len(rows)}
