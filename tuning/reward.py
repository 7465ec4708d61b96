"""Reward models: Bradley–Terry training of a sequence-classification head
on preference pairs, in the studio's training loop.

The model is the base loaded as ``AutoModelForSequenceClassification`` with
one output (``tuning.models.load_model_for_task``: a new ``score`` head on a
causal LM, read at each row's last token). A batch holds the chosen
conversations first and the rejected ones second
(``tuning.data.preference.collate_pairs``, the whole conversation rendered
through the chat template), and the loss is TRL's ``RewardTrainer``'s
(1.16): −log σ(r_chosen − r_rejected), plus ``reward_centering`` ×
mean((r_chosen + r_rejected)²) where set (its ``center_rewards_coefficient``,
which keeps the scores near zero). TRL computes it inline in
``RewardTrainer.compute_loss``, so it is written out here and
``tests/core/test_reward.py`` checks the loss and LoRA gradients against
that trainer on the same batch.

The output is an ordinary sequence classifier: a LoRA adapter (with the
head saved beside it, peft's SEQ_CLS) or a full model, which loads with
stock transformers + peft (``tuning.loading.load_artifact(task="reward")``);
``score_texts`` is how other jobs score replies with it, and the evaluate
run (``tuning.scoring``) measures its pairwise accuracy on any pairs.
"""

from __future__ import annotations

from typing import Any

from tuning.preference import PreferenceObjective


def reward_loss(chosen, rejected, *, centering: float = 0.0):
    """TRL RewardTrainer's loss of a batch of (chosen, rejected) scores."""
    import torch

    loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
    if centering:
        loss = loss + centering * torch.mean((chosen + rejected) ** 2)
    return loss


def row_scores(model, inputs: dict):
    """Each row's score (the head's one output), in fp32."""
    return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                 use_cache=False).logits.squeeze(-1).float()


class RewardObjective:
    """The training loop's ``compute_loss`` for a reward model, with the
    protocol of ``tuning.preference.PreferenceObjective`` (so the loop's
    metrics and ``evaluate_pairs`` serve it alike): the rewards of the chosen
    and rejected replies, their margin, and the pairwise accuracy."""

    def __init__(self, model, *, centering: float = 0.0):
        self.model, self.centering = model, centering
        self._pending: list[dict] = []

    def scores(self, inputs: dict) -> tuple[Any, dict]:
        import torch

        chosen, rejected = row_scores(self.model, inputs).chunk(2)
        loss = reward_loss(chosen, rejected, centering=self.centering)
        with torch.no_grad():
            metrics = {"rewards_chosen": chosen.mean(), "rewards_rejected": rejected.mean(),
                       "reward_margin": (chosen - rejected).mean(),
                       "reward_accuracy": (chosen > rejected).float().mean()}
        return loss, metrics

    # The same bookkeeping as the preference losses: pairs, metrics averaged over a step's micro-batches.
    __call__ = PreferenceObjective.__call__
    take_metrics = PreferenceObjective.take_metrics
    rows = PreferenceObjective.rows


def score_texts(model, tokenizer, conversations: list[list[dict]], *, device: str = "cpu",
                max_length: int = 1024) -> list[float]:
    """The reward of each conversation ([{"role", "content"}], ending on the reply to score),
    rendered through the tokenizer's chat template as in training."""
    import torch

    from tuning.data.sft import ensure_chat_template

    ensure_chat_template(tokenizer)
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    encoded = tokenizer(texts, add_special_tokens=False, padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
    with torch.no_grad():
        return row_scores(model, {key: value.to(device) for key, value in encoded.items()}).tolist()
