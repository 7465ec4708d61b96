"""WiSE-FT (Wortsman et al., 2022, arXiv:2109.01903, "Robust fine-tuning of
zero-shot models"): interpolate a fine-tuned model with its base,
θ = (1 − α) · θ_base + α · θ_ft. The paper finds intermediate α keeps most
of the fine-tune's gain on its task and recovers robustness the fine-tune
lost; α = 1 is the fine-tune, α = 0 the base.

Two rows share this file:

- ``wise_ft`` (models): any fine-tune or adapter, written as a full model,
  tensor by tensor. Equal to mergekit's ``linear`` merge of the base
  (weight 1 − α) and the fine-tune (weight α).
- ``lora_wise_ft`` (adapters): for a LoRA adapter the interpolation is just
  its update scaled, θ_base + α · s·B·A, so the output is the same adapter
  with every B matrix multiplied by α: small, and exact.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

from tuning.fields import setting
from tuning.merge.stream import stream_merge
from tuning.merge.tensors import ADAPTER_CONFIG, ADAPTER_WEIGHTS, lora_updates, read_header


@dataclass(frozen=True, kw_only=True)
class WiseFtParams:
    alpha: float = setting(0.5, help="α: how far from the base towards the fine-tune (0 gives the base, 1 the "
                                     "fine-tune; the paper's plots favour 0.3–0.7 for robustness).", min=0.0,
                           max=1.0, basic=True, label="Mixing α")


PRESETS = {"robust": {"alpha": 0.3}, "balanced": {"alpha": 0.5}, "task-leaning": {"alpha": 0.8}}


def merge_tensors(base, tensors: list, weights: list[float], params: WiseFtParams):
    """(1 − α) · θ_base + α · θ_ft; source weights are not used (one source)."""
    return base.mul_(1 - params.alpha).add_(tensors[0], alpha=params.alpha)


def run(job) -> dict:
    return stream_merge(job, lambda name, base, tensors: merge_tensors(base, tensors, [], job.params))


def adapter_refusals(sources: list, base=None) -> dict[str, str]:
    """Adapters whose update is not linear in B (or that carry full
    modules) cannot be interpolated by scaling: name them and the fix
    (``base``, the run's base model, plays no part here)."""
    for index, source in enumerate(sources):
        config = json.loads((source.path / ADAPTER_CONFIG).read_text())
        why = ""
        if config.get("peft_type") != "LORA":
            why = f"is a {config.get('peft_type')} adapter"
        elif config.get("use_dora"):
            why = "is DoRA, whose magnitude rescaling is not linear in B"
        elif config.get("bias", "none") != "none" or config.get("lora_bias"):
            why = "trains biases, which scaling B does not reach"
        else:
            updates = lora_updates(list(read_header(source.path / ADAPTER_WEIGHTS)))
            full = sorted(name for name, (kind, _) in updates.items() if kind == "replace")
            if full:
                why = f"trains {full[0]} in full (modules_to_save)"
        if why:
            return {f"sources.{index}": f"{source.path} {why}, so it cannot be interpolated by scaling; use "
                                        f"WiSE-FT (models), which folds it and writes a full model"}
    return {}


def run_adapter(job) -> dict:
    """Copy the adapter and scale its B matrices by α."""
    import torch
    from safetensors.torch import load_file, save_file

    source = job.sources[0]
    shutil.copytree(source.path, job.out, dirs_exist_ok=True)
    tensors = load_file(str(source.path / ADAPTER_WEIGHTS))
    scaled = 0
    for key, tensor in tensors.items():
        if key.endswith((".lora_B.weight", ".lora_embedding_B")):
            tensors[key] = (tensor.to(torch.float32) * job.params.alpha).to(tensor.dtype)
            scaled += 1
    save_file(tensors, str(job.out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    job.progress(1, 1, unit="adapters")
    return {"scaled_matrices": scaled}
