"""Preference tuning's losses, computed the way TRL computes them, inside
the studio's own training loop (``tuning.train``).

A batch holds the chosen replies first and the rejected replies second,
as padded rows (``tuning.data.preference.collate_pairs``) or, in training,
as shared-prefix blocks (``tuning.data.preference_packing``: each prompt
computed once, no padding). One forward pass over both gives each reply's
summed log-probability of its labelled tokens (the reply and its
end-of-turn token; ``tuning.preference_scoring``); the reference model's come from the same
forward with the adapter switched off (LoRA and the other peft adapters: no
second copy in memory), from a frozen copy of the base (full fine-tuning
and the selective methods), or from numbers computed once before training
(``reference = precomputed``). ORPO, SimPO and CPO need no reference.

The losses themselves are TRL's: ``CPOTrainer.cpo_loss`` (sigmoid with
label smoothing, IPO, SimPO) and ``ORPOTrainer.odds_ratio_loss``, called
with the few settings they read (``_trl``). DPO's, IPO's and conservative
DPO's losses are ``cpo_loss`` applied to the log-ratios against the
reference instead of the log-probabilities: that is exactly TRL's
DPOTrainer loss (its IPO divides each log-ratio by the reply's token count
first), which ``tests/core/test_preference_parity.py`` checks against the
trainers themselves, loss and LoRA gradients. TRL's DPOTrainer computes its
loss inline, so it has no function to call.

Nothing here imports torch or TRL at import time: the web process reads
``PREFERENCE_LOSSES`` to draw the form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuning.preference_scoring import SHARED, reference_logps, sequence_logps, token_logps

__all__ = ["PREFERENCE_LOSSES", "PreferenceObjective", "PreferenceSettings", "pair_loss", "reference_logps",
           "token_logps"]


@dataclass(frozen=True)
class PreferenceLoss:
    name: str
    label: str
    paper: str
    description: str
    needs_reference: bool  # scores the replies against a frozen reference model
    label_smoothing: bool = False  # reads label_smoothing
    unpaired: bool = False  # trains on single labelled completions (tuning.preference_kto), not on pairs


PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {loss.name: loss for loss in (
    PreferenceLoss("dpo", "DPO", "https://arxiv.org/abs/2305.18290",
                   "Direct preference optimisation: raise the chosen reply's likelihood ratio against the reference "
                   "above the rejected one's (sigmoid loss).", needs_reference=True),
    PreferenceLoss("ln_dpo", "LN-DPO", "https://arxiv.org/abs/2407.15229",
                   "Length-normalised DPO: each reply's log-ratio against the reference is divided by its token "
                   "count before DPO's sigmoid loss, so a longer reply earns no larger reward; shorter answers at "
                   "the same quality.", needs_reference=True),
    PreferenceLoss("ipo", "IPO", "https://arxiv.org/abs/2310.12036",
                   "Identity preference optimisation: a squared loss that keeps the per-token margin near 1/(2β) "
                   "instead of pushing it without bound; beta is the paper's τ.", needs_reference=True),
    PreferenceLoss("cdpo", "Conservative DPO", "https://ericmitchell.ai/cdpo.pdf",
                   "DPO assuming a share of the labels (label smoothing) is flipped: noisy preferences hurt less.",
                   needs_reference=True, label_smoothing=True),
    PreferenceLoss("orpo", "ORPO", "https://arxiv.org/abs/2403.07691",
                   "Odds-ratio preference optimisation: supervised loss on the chosen reply plus an odds-ratio term "
                   "(weighted by beta, the paper's λ); no reference model.", needs_reference=False),
    PreferenceLoss("simpo", "SimPO", "https://arxiv.org/abs/2405.14734",
                   "Simple preference optimisation: the mean log-probability per token is the reward, with a target "
                   "margin (simpo gamma); no reference model. The paper uses beta 2 to 2.5.",
                   needs_reference=False, label_smoothing=True),
    PreferenceLoss("cpo", "CPO", "https://arxiv.org/abs/2401.08417",
                   "Contrastive preference optimisation: DPO's loss without a reference, plus a supervised loss on the "
                   "chosen reply (weighted by cpo alpha).", needs_reference=False, label_smoothing=True),
    PreferenceLoss("kto", "KTO", "https://arxiv.org/abs/2402.01306",
                   "Kahneman-Tversky optimisation: learns from single completions labelled desirable or undesirable "
                   "(prompt, completion, label), no pairs needed; pairs are split into one of each. Weight the rarer "
                   "side up (desirable/undesirable weight) when the labels are unbalanced.", needs_reference=True,
                   unpaired=True),
)}


UNPAIRED_SCHEMA = "unpaired"  # tuning.data.schemas.unpaired: single labelled completions


def loss_data_problem(loss: str, schema: str) -> str | None:
    """Why ``loss`` cannot train on data read as ``schema``, or None: only
    KTO learns from unpaired completions (it also takes pairs, split)."""
    if schema == UNPAIRED_SCHEMA and not PREFERENCE_LOSSES[loss].unpaired:
        return (f"{PREFERENCE_LOSSES[loss].label} compares a chosen and a rejected reply to the same prompt, but "
                f"this dataset holds unpaired completions (prompt, completion, label); choose kto, or a dataset "
                f"of pairs")
    return None


@dataclass(frozen=True)
class PreferenceSettings:
    """The settings of ``TrainConfig`` a preference loss reads."""

    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    cpo_alpha: float = 1.0
    desirable_weight: float = 1.0  # KTO
    undesirable_weight: float = 1.0  # KTO

    @classmethod
    def from_config(cls, config) -> "PreferenceSettings":
        return cls(loss=config.preference_loss, beta=config.beta, label_smoothing=config.label_smoothing,
                   simpo_gamma=config.simpo_gamma, cpo_alpha=config.cpo_alpha,
                   desirable_weight=config.desirable_weight, undesirable_weight=config.undesirable_weight)

    @property
    def needs_reference(self) -> bool:
        return PREFERENCE_LOSSES[self.loss].needs_reference


def _trl(device, **settings):
    """What TRL's loss methods read from their trainer (``self``): the
    settings given and the device; ``alpha`` 0 is CPO without AlphaPO's
    reward transform."""
    from types import SimpleNamespace

    return SimpleNamespace(accelerator=SimpleNamespace(device=device), alpha=0.0, **settings)


def _trl_trainers():
    """TRL's CPO and ORPO trainer classes (under ``trl.experimental``, whose import warns that its API may
    change: the version is pinned, and the parity tests catch a change)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")
        from trl.experimental.cpo import CPOTrainer
        from trl.experimental.orpo import ORPOTrainer
    return CPOTrainer, ORPOTrainer


def _cpo_loss(chosen, rejected, *, loss_type: str, beta: float, label_smoothing: float = 0.0,
              simpo_gamma: float = 0.0):
    CPOTrainer, _ = _trl_trainers()
    settings = _trl(chosen.device, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
                    simpo_gamma=simpo_gamma)
    return CPOTrainer.cpo_loss(settings, chosen, rejected)


def pair_loss(settings: PreferenceSettings, summed, counts, ref_logps=None, *, chosen_nll=None
              ) -> tuple[Any, dict]:
    """(the mean loss of the batch's pairs, its metrics as detached tensors:
    rewards of the chosen and rejected replies, their margin and how often
    the chosen one's is higher). ``summed``/``counts``: each sequence's
    summed log-probability of its labelled tokens and their number (chosen
    sequences first, from ``sequence_logps``); ``ref_logps`` the reference's
    sums; ``chosen_nll`` ORPO's supervised term (``orpo_nll``)."""
    import torch

    pairs = summed.shape[0] // 2
    mean = summed / counts  # per token, as TRL's get_batch_logps(average_log_prob=True)
    beta, kind = settings.beta, settings.loss
    if settings.needs_reference:
        ratios = summed - ref_logps
        # TRL's DPO IPO and LN-DPO (arXiv:2407.15229, eq. 4): the log-ratio per reply token.
        per_token = kind in ("ipo", "ln_dpo")
        scores = ratios / counts if per_token else ratios
        losses, _, _ = _cpo_loss(*scores.chunk(2), loss_type="ipo" if kind == "ipo" else "sigmoid", beta=beta,
                                 label_smoothing=settings.label_smoothing if kind == "cdpo" else 0.0)
        loss = losses.mean()
        chosen_rewards, rejected_rewards = (beta * (scores if kind == "ln_dpo" else ratios).detach()).chunk(2)
    elif kind == "orpo":
        ratio_losses, chosen_rewards, rejected_rewards, _, _ = _trl_trainers()[1].odds_ratio_loss(
            _trl(summed.device, beta=beta), *mean.chunk(2))
        loss = chosen_nll - ratio_losses.mean()
    else:
        simpo = kind == "simpo"
        losses, chosen_rewards, rejected_rewards = _cpo_loss(
            *(mean if simpo else summed).chunk(2), loss_type=kind if simpo else "sigmoid", beta=beta,
            label_smoothing=settings.label_smoothing, simpo_gamma=settings.simpo_gamma)
        loss = losses.mean()
        if not simpo and settings.cpo_alpha:
            loss = loss + settings.cpo_alpha * -summed[:pairs].sum() / counts[:pairs].sum()
    with torch.no_grad():
        metrics = {"rewards_chosen": chosen_rewards.mean(), "rewards_rejected": rejected_rewards.mean(),
                   "reward_margin": (chosen_rewards - rejected_rewards).mean(),
                   "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean()}
    return loss, metrics


def orpo_nll(logps, attention_mask):
    """ORPO's supervised term, as TRL's ORPOTrainer: the mean negative log-probability over the chosen
    rows' prompt and reply alike (``logps`` from ``token_logps`` on padded rows)."""
    pairs = logps.shape[0] // 2
    seen = attention_mask[:pairs, 1:].to(logps.dtype)
    return -(logps[:pairs] * seen).sum() / seen.sum()


def shares_prefix(loss: str) -> bool:
    """Whether ``loss`` can train on shared-prefix blocks: it reads only each reply's summed
    log-probability (ORPO's supervised term covers the prompt too; KTO scores single completions)."""
    return loss != "orpo" and not PREFERENCE_LOSSES[loss].unpaired


class PreferenceObjective:
    """The training loop's ``compute_loss`` for preference pairs: the loss
    of a micro-batch, with its metrics kept until ``take_metrics`` reads the
    step's mean (one device sync per step, not per micro-batch)."""

    def __init__(self, model, settings: PreferenceSettings, *, reference=None):
        self.model, self.settings, self.reference = model, settings, reference
        self._pending: list[dict] = []

    def scores(self, inputs: dict) -> tuple[Any, dict]:
        ref = None
        if self.settings.needs_reference:
            ref = inputs.get("ref_logps")
            if ref is None:
                ref = reference_logps(self.model, inputs, reference=self.reference)
        if self.settings.loss == "orpo":
            logps, labelled = token_logps(self.model, inputs)
            return pair_loss(self.settings, (logps * labelled).sum(dim=1), labelled.sum(dim=1),
                             chosen_nll=orpo_nll(logps, inputs["attention_mask"]))
        return pair_loss(self.settings, *sequence_logps(self.model, inputs), ref)

    def __call__(self, inputs: dict):
        loss, metrics = self.scores(inputs)
        self._pending.append(metrics)
        return loss

    def take_metrics(self) -> dict[str, float]:
        """The mean of each metric over the micro-batches since the last call, rounded."""
        pending, self._pending = self._pending, []
        if not pending:
            return {}
        return {key: round(sum(float(m[key]) for m in pending) / len(pending), 6) for key in pending[0]}

    def rows(self, inputs: dict) -> int:
        """The pairs in a batch (each is two sequences)."""
        if SHARED in inputs:  # shared-prefix blocks: a row may hold several pairs
            return (int(inputs[SHARED].max()) + 1) // 2
        return inputs["input_ids"].shape[0] // 2

    def precompute(self, items: list, *, collate, batch_size: int, device: str, autocast) -> list:
        return precompute_reference(items, model=self.model, collate=collate, batch_size=batch_size, device=device,
                                    autocast=autocast, reference=self.reference)


def evaluate_pairs(objective, batches, *, device: str, autocast) -> dict:
    """Mean loss and reward accuracy and margin over the validation rows
    (pairs, or KTO's completions: ``objective.rows`` counts them); a batch
    whose margin is undefined (KTO rows of one label only) adds no margin."""
    import math

    import torch

    model = objective.model
    was_training = model.training
    model.eval()
    sums = {"eval_loss": 0.0, "accuracy": 0.0, "reward_margin": 0.0}
    counts = dict.fromkeys(sums, 0)
    with torch.no_grad():
        for batch in batches:
            inputs = {key: value.to(device) for key, value in batch.items()}
            with autocast():
                loss, metrics = objective.scores(inputs)
            rows = objective.rows(inputs)
            for key, value in (("eval_loss", loss), ("accuracy", metrics["reward_accuracy"]),
                               ("reward_margin", metrics["reward_margin"])):
                if math.isfinite(value := float(value)):
                    sums[key] += value * rows
                    counts[key] += rows
    model.train(was_training)
    return {key: round(value / counts[key], 6) if counts[key] else None for key, value in sums.items()} | {
        "rows": counts["eval_loss"]}


def precompute_reference(items: list, *, model, collate, batch_size: int, device: str, autocast,
                         reference=None) -> list:
    """``items`` (PreferenceExample) with the reference's log-probabilities
    attached, scored once in batches; the model must still hold the base weights."""
    import dataclasses

    out = []
    was_training = model.training
    model.eval()
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        inputs = {key: value.to(device) for key, value in collate(batch).items() if key != "ref_logps"}
        with autocast():
            logps = reference_logps(model, inputs, reference=reference).float().cpu()
        chosen, rejected = logps.chunk(2)
        out += [dataclasses.replace(item, ref_logps=(float(c), float(r)))
                for item, c, r in zip(batch, chosen, rejected)]
    model.train(was_training)
    return out
