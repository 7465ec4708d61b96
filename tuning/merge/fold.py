"""Fold an adapter into its base: W ← W + ΔW for every adapted layer, then
drop the adapter, giving a plain transformers model that needs neither peft
nor the adapter to run. peft's own merge code does the folding, so every
adapter type peft can load (LoRA and DoRA, LoHa, LoKr, IA3, OFT, ...) folds;
the whole base model is held in memory once."""

from __future__ import annotations

from dataclasses import dataclass

from tuning.errors import ModelError
from tuning.events import LogEvent
from tuning.merge.sources import copy_base_files, torch_dtype


@dataclass(frozen=True, kw_only=True)
class FoldParams:
    pass  # folding is exact: nothing to choose


def run(job) -> dict:
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    from tuning.models import load_causal_lm

    source = job.sources[0]
    if source.kind != "adapter":
        raise ModelError(f"{source.path} is a full model, not an adapter: folding needs an adapter directory "
                         f"(with adapter_config.json); to combine full models pick a method of the models group")
    model = load_causal_lm(str(source.base), trust_remote_code=job.config.trust_remote_code)
    try:
        model = PeftModel.from_pretrained(model, str(source.path))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"cannot load the adapter {source.path} on {source.base}: {exc}. Check that the adapter "
                         f"was trained on this base model") from None
    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    job.sink.emit(LogEvent(message=f"Folding {len(layers)} adapted layers into {source.base}"))
    # Layer by layer (what merge_and_unload does in one call) to report progress and honour a cancel.
    for done, layer in enumerate(layers, start=1):
        job.check_stop()
        layer.merge()
        job.progress(done, len(layers))
    model = model.unload()  # the base layers now hold the folded weights
    model.to(torch_dtype(job.config.dtype, source.base)).save_pretrained(str(job.out), safe_serialization=True)
    copy_base_files(source.base, job.out, model=False)
    # an adapter trained with another chat template than its base's ships its tokenizer: that one wins
    copy_base_files(source.path, job.out, model=False)
    return {"folded_layers": len(layers)}
