"""Combine several LoRA adapters of one base into one LoRA adapter, with
peft's ``add_weighted_adapter``. The "combination" says how:

- linear: weighted sums of the A and of the B matrices (cheap, and only an
  approximation of the sum of the updates, since ΣBᵢ·ΣAᵢ ≠ ΣBᵢAᵢ);
- cat: A and B concatenated along the rank: exactly Σ wᵢ·BᵢAᵢ, with the
  ranks adding up;
- svd: the exact weighted sum of the updates, truncated back to a rank by SVD;
- ties, dare_linear, dare_ties, magnitude_prune: those methods applied to
  the A and B matrices, or, with ``full_delta``, to the full updates BᵢAᵢ
  followed by an SVD (slower, closer to the papers).

The base model is loaded once (peft needs it to hold the adapters).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuning.fields import setting
from tuning.events import LogEvent
from tuning.merge.common import density_setting, sign_setting
from tuning.merge.sources import copy_base_files

SVD_RANK_HELP = "Rank of the combined adapter after the SVD; 0 uses the largest rank among the sources."
FULL_HELP = ("Apply the method to each adapter's full update B·A and bring the result back to a low rank with an "
             "SVD, instead of to A and B separately.")
# Methods whose combination works on A and B matrix by matrix: peft needs one rank for all sources.
SAME_RANK = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")


@dataclass(frozen=True, kw_only=True)
class LinearParams:
    pass


@dataclass(frozen=True, kw_only=True)
class CatParams:
    pass


@dataclass(frozen=True, kw_only=True)
class SvdParams:
    svd_rank: int = setting(0, help=SVD_RANK_HELP, min=0, max=4096, label="Rank")


@dataclass(frozen=True, kw_only=True)
class PruneParams:
    density: float = density_setting(0.5, "Fraction of entries kept in each adapter before combining.")
    full_delta: bool = setting(False, help=FULL_HELP, label="On full updates")
    svd_rank: int = setting(0, help="With full updates: " + SVD_RANK_HELP, min=0, max=4096, label="Rank")


@dataclass(frozen=True, kw_only=True)
class TiesParams(PruneParams):
    sign_method: str = sign_setting()


@dataclass(frozen=True, kw_only=True)
class DareParams(PruneParams):
    seed: int = setting(0, help="Random seed for the dropped entries.", min=0, max=2**31 - 1)


@dataclass(frozen=True, kw_only=True)
class DareTiesParams(DareParams):
    sign_method: str = sign_setting()


def _peft_arguments(combination: str, params) -> dict:
    full = getattr(params, "full_delta", False)
    kind = combination + ("_svd" if full else "")
    arguments = {"combination_type": kind}
    if hasattr(params, "density"):
        arguments["density"] = params.density
    if hasattr(params, "sign_method"):
        arguments["majority_sign_method"] = params.sign_method
    if (kind.endswith("svd")) and params.svd_rank:
        arguments["svd_rank"] = params.svd_rank
    return arguments


def runner(combination: str):
    """The ``run`` function of the adapters-group method ``combination``."""

    def run(job) -> dict:
        import torch
        from peft import PeftModel

        from tuning.models import load_causal_lm

        if hasattr(job.params, "seed"):
            torch.manual_seed(job.params.seed)  # peft's random drop uses the global generator
        model = load_causal_lm(job.config.base_model, trust_remote_code=job.config.trust_remote_code)
        names = [f"source_{index}" for index in range(len(job.sources))]
        for done, (name, source) in enumerate(zip(names, job.sources), start=1):
            job.check_stop()
            if done == 1:
                model = PeftModel.from_pretrained(model, str(source.path), adapter_name=name)
            else:
                model.load_adapter(str(source.path), adapter_name=name)
            job.progress(done, len(names), phase="Loading adapters", unit="adapters")
        job.check_stop()
        arguments = _peft_arguments(combination, job.params)
        job.sink.emit(LogEvent(message=f"Combining {len(names)} adapters with peft ({arguments['combination_type']})"))
        weights = [source.weight for source in job.sources]
        # Named "default" so that save_pretrained writes it at the top of the directory.
        model.add_weighted_adapter(names, weights, "default", **arguments)
        model.set_adapter("default")
        for name in names:
            model.delete_adapter(name)
        model.save_pretrained(str(job.out), selected_adapters=["default"], safe_serialization=True)
        layers = sum(1 for key in model.state_dict() if key.endswith("lora_A.default.weight"))
        job.progress(layers, layers)
        copy_base_files(job.sources[0].base, job.out, model=False)
        return {"rank": model.peft_config["default"].r, "combination": arguments["combination_type"]}

    return run
