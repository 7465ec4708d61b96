"""KTO (Kahneman–Tversky optimisation) in the studio's training loop: a
loss on unpaired completions, each labelled desirable or undesirable
(``tuning.data.unpaired``), against a reference model.

The formula is TRL's ``KTOTrainer`` (1.16, ``loss_type="kto"``, Eqn. 7 of
https://arxiv.org/abs/2402.01306): with r = log π(y|x) − log π_ref(y|x)
summed over the completion's labelled tokens and z₀ the batch's mean of the
same log-ratio on mismatched (prompt, another row's completion) sequences,
detached and clamped at 0,

    desirable:    1 − σ(β (r − z₀)),   weighted by desirable_weight
    undesirable:  1 − σ(β (z₀ − r)),   weighted by undesirable_weight

and the loss is their mean over the batch's rows. TRL computes it inline in
``KTOTrainer._compute_loss`` (no function to call), so it is written out
here and ``tests/core/test_preference_parity.py`` checks the loss and the
LoRA gradients against that trainer on the same batch.

The reference is found as for DPO (``tuning.preference``): the adapter
switched off, a frozen copy for full fine-tuning, or numbers computed once
before training.
"""

from __future__ import annotations

import math
from typing import Any

from tuning.data.unpaired import UnpairedExample, unpair
from tuning.errors import ConfigError
from tuning.preference import UNPAIRED_SCHEMA, PreferenceSettings, loss_data_problem, reference_logps, token_logps


def kto_loss(settings: PreferenceSettings, logps, ref_logps, desirable, kl) -> tuple[Any, Any]:
    """(the mean loss over the rows, each row's implied reward β r) as TRL's KTOTrainer computes them."""
    import torch

    ratios = logps - ref_logps
    beta = settings.beta
    chosen = 1 - torch.sigmoid(beta * (ratios[desirable] - kl))
    rejected = 1 - torch.sigmoid(beta * (kl - ratios[~desirable]))
    losses = torch.cat((settings.desirable_weight * chosen, settings.undesirable_weight * rejected))
    return losses.nanmean(), beta * ratios.detach()


def _kl_inputs(inputs: dict) -> dict:
    return {key: inputs[f"kl_{key}"] for key in ("input_ids", "attention_mask", "labels")}


class KTOObjective:
    """The training loop's ``compute_loss`` for unpaired completions, with
    the same protocol as ``tuning.preference.PreferenceObjective``."""

    def __init__(self, model, settings: PreferenceSettings, *, reference=None):
        self.model, self.settings, self.reference = model, settings, reference
        self._pending: list[dict] = []

    def scores(self, inputs: dict) -> tuple[Any, dict]:
        import torch

        kl_inputs = _kl_inputs(inputs)
        ref, ref_kl = inputs.get("ref_logps"), inputs.get("ref_kl_logps")
        if ref is None:
            ref = reference_logps(self.model, inputs, reference=self.reference)
            ref_kl = reference_logps(self.model, kl_inputs, reference=self.reference)
        with torch.no_grad():  # z₀ is a baseline, not trained through (as TRL)
            kl_logps, kl_labelled = token_logps(self.model, kl_inputs)
            kl = ((kl_logps * kl_labelled).sum(dim=1) - ref_kl).mean().clamp(min=0)
        logps, labelled = token_logps(self.model, inputs)
        desirable = inputs["desirable"]
        loss, rewards = kto_loss(self.settings, (logps * labelled).sum(dim=1), ref, desirable, kl)
        return loss, _metrics(rewards, desirable, kl)

    def __call__(self, inputs: dict):
        loss, metrics = self.scores(inputs)
        self._pending.append(metrics)
        return loss

    def take_metrics(self) -> dict[str, float]:
        """The mean of each metric over the micro-batches since the last call (a micro-batch without
        desirable or undesirable rows has no reward of that side)."""
        pending, self._pending = self._pending, []
        values: dict[str, list[float]] = {}
        for metrics in pending:
            for key, value in metrics.items():
                if not math.isnan(value := float(value)):
                    values.setdefault(key, []).append(value)
        return {key: round(sum(v) / len(v), 6) for key, v in values.items()}

    def rows(self, inputs: dict) -> int:
        return inputs["input_ids"].shape[0]

    def precompute(self, items: list, *, collate, batch_size: int, device: str, autocast) -> list:
        """``items`` with the reference's log-probabilities of (completion, mismatched) attached."""
        import dataclasses

        out = []
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            inputs = {key: value.to(device) for key, value in collate(batch).items()}
            with autocast():
                main = reference_logps(self.model, inputs, reference=self.reference).float().cpu()
                kl = reference_logps(self.model, _kl_inputs(inputs), reference=self.reference).float().cpu()
            out += [dataclasses.replace(item, ref_logps=(float(m), float(k))) for item, m, k in zip(batch, main, kl)]
        return out


def _metrics(rewards, desirable, kl) -> dict:
    """Rewards of the desirable and undesirable completions (NaN where the batch has none), their
    margin, the share of rows whose reward has their label's sign, and z₀."""
    import torch

    nan = torch.tensor(float("nan"), device=rewards.device)
    chosen = rewards[desirable].mean() if desirable.any() else nan
    rejected = rewards[~desirable].mean() if (~desirable).any() else nan
    right = torch.where(desirable, rewards > 0, rewards < 0).float().mean()
    return {"rewards_chosen": chosen, "rewards_rejected": rejected, "reward_margin": chosen - rejected,
            "reward_accuracy": right, "kl": kl.detach()}


def items_for_loss(loss: str, items: list, *, max_length: int) -> list:
    """The rows a loss trains on: KTO takes unpaired completions, or pairs split into a desirable and an
    undesirable completion each; the pairwise losses refuse unpaired data, naming the setting."""
    if not items:
        return items
    is_unpaired = isinstance(items[0], UnpairedExample)
    if loss == "kto":
        return items if is_unpaired else unpair(items, max_length=max_length)
    if is_unpaired:
        raise ConfigError({"preference_loss": loss_data_problem(loss, UNPAIRED_SCHEMA)})
    return items
