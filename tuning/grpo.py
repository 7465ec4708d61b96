"""GRPO (group relative policy optimisation) in the studio's training loop,
with the rewards of ``tuning.grpo_rewards``.

Each micro-batch of prompts (``tuning.data.prompts``) is answered
``group_size`` times by sampling from the model being trained; each
completion is rewarded, and its advantage is its reward less its group's
mean, over the group's standard deviation (TRL's ``scale_rewards="group"``).
The loss is TRL's ``GRPOTrainer`` loss (1.16) with one optimisation pass per
generation (``num_iterations=1``, so the importance ratio is 1 but carries
the gradient), the per-token loss −min(ρA, clip(ρ)A) plus ``kl_beta`` × ρ ×
the k3 KL estimate against the reference (the adapter switched off, or a frozen
copy), averaged over the batch's completion tokens (``loss_type="bnpo"``,
which is TRL's default ``dapo`` when a step is one micro-batch). Token
log-probabilities are taken at the sampling temperature, as TRL does.
``tests/core/test_grpo.py`` checks loss and LoRA gradients against
``GRPOTrainer._compute_loss`` on the same completions.

``policy_loss = remax`` trains with ReMax instead (Li et al., 2023,
arXiv:2310.10505, Algorithm 1): REINFORCE whose baseline is the reward of
the model's greedy answer to the same prompt, decoded once per prompt
without a gradient. The loss is −(r − r_greedy) · Σₜ log π(aₜ), the sum
over each completion's tokens, averaged over the completions (the paper's
gradient estimate), plus the same KL penalty as GRPO's where ``kl_beta``
is set; no clipping and no normalisation by the group's spread, so one
sample per prompt (``group_size`` 1, the paper's) is enough.
``tests/core/test_remax.py`` checks it against the paper's formula.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuning.grpo_rewards import Scored, exact_match, format_match, length_within
from tuning.loading import load_artifact
from tuning.reward import score_texts

CLIP_EPSILON = 0.2  # TRL's default; with one pass per generation the ratio is 1 and the clip never binds


@dataclass(frozen=True)
class GRPOSettings:
    group_size: int = 4
    max_completion_length: int = 64
    temperature: float = 1.0
    kl_beta: float = 0.0
    policy_loss: str = "grpo"  # or "remax"

    @classmethod
    def from_config(cls, config) -> "GRPOSettings":
        return cls(group_size=config.group_size, max_completion_length=config.max_completion_length,
                   temperature=config.temperature, kl_beta=config.kl_beta, policy_loss=config.policy_loss)


def completion_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, *, temperature: float):
    """Per-token log-probabilities of the completion tokens (rows, completion length), at ``temperature``."""
    import torch
    from trl.trainer.utils import selective_log_softmax

    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, prompt_ids.shape[1] - 1:-1].float() / temperature
    return selective_log_softmax(logits, completion_ids)


def grpo_loss(logps, mask, advantages, *, kl_beta: float = 0.0, ref_logps=None) -> tuple[Any, Any]:
    """(TRL's GRPO loss, bnpo aggregation, one pass per generation; the mean per-token KL or None)."""
    import torch

    ratio = torch.exp(logps - logps.detach())
    clipped = torch.clamp(ratio, 1 - CLIP_EPSILON, 1 + CLIP_EPSILON)
    advantages = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * advantages, clipped * advantages)
    kl = None
    if kl_beta:
        kl = k3_kl(logps, ref_logps)
        # TRL's use_bias_correction_kl (its default): weighted by the ratio, whose value is 1 but whose
        # gradient makes the KL term's gradient the unbiased reverse-KL one (DeepSeek-V3.2).
        per_token = per_token + kl_beta * kl * ratio
    mask = mask.to(per_token.dtype)
    loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    mean_kl = None if kl is None else (kl.detach() * mask).sum() / mask.sum().clamp(min=1.0)
    return loss, mean_kl


def remax_loss(logps, mask, advantages, *, kl_beta: float = 0.0, ref_logps=None) -> tuple[Any, Any]:
    """(ReMax's loss: −(r − r_greedy) times each completion's summed token
    log-probability, averaged over the completions, plus ``kl_beta`` × the
    mean per-token k3 KL against the reference; that mean KL or None).
    ``advantages``: each completion's reward less its prompt's greedy reward."""
    mask = mask.to(logps.dtype)
    loss = -(advantages * (logps * mask).sum(dim=1)).mean()
    mean_kl = None
    if kl_beta:
        kl = k3_kl(logps, ref_logps)
        tokens = mask.sum().clamp(min=1.0)
        loss = loss + kl_beta * (kl * mask).sum() / tokens
        mean_kl = (kl.detach() * mask).sum() / tokens
    return loss, mean_kl


def k3_kl(logps, ref_logps):
    """The k3 estimate of KL(π ‖ π_ref) per token, as GRPO's (TRL's)."""
    import torch

    return torch.exp(ref_logps - logps) - (ref_logps - logps) - 1


def group_advantages(rewards, group_size: int):
    """(reward − group mean) / (group std + 1e-4), as TRL's scale_rewards="group"; and the group stds."""
    grouped = rewards.view(-1, group_size)
    std = grouped.std(dim=1)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)) / (std.unsqueeze(1) + 1e-4)
    return advantages.view(-1), std


def _completion_mask(completion_ids, stop_ids: set[int]):
    """1 up to and including each completion's first stop token, 0 after it."""
    import torch

    stops = torch.zeros_like(completion_ids, dtype=torch.bool)
    for token in stop_ids:
        stops |= completion_ids == token
    # Positions after the first stop: the cumulative count of stops before them is positive.
    before = torch.cumsum(stops.long(), dim=1) - stops.long()
    return (before == 0).long()


RewardFunction = Callable[[list[Scored]], list[float]]  # one reward per completion


def reward_functions(config, *, device: str = "cpu") -> dict[str, tuple[float, RewardFunction]]:
    """{name: (weight, function)} for the rewards the run's settings turn on (weight above 0)."""
    functions: dict[str, tuple[float, RewardFunction]] = {}
    if config.reward_exact_match:
        functions["exact_match"] = (config.reward_exact_match, lambda rows: [
            exact_match(r.completion, r.reference, config.answer_pattern) for r in rows])
    if config.reward_format:
        functions["format"] = (config.reward_format, lambda rows: [
            format_match(r.completion, config.format_pattern) for r in rows])
    if config.reward_length:
        functions["length"] = (config.reward_length, lambda rows: [
            length_within(r.tokens, config.length_min, config.length_max) for r in rows])
    if config.reward_model_weight:
        functions["reward_model"] = (config.reward_model_weight, _reward_model(config, device))
    return functions


def _reward_model(config, device: str) -> RewardFunction:
    model, tokenizer = load_artifact(config.reward_model, base_model=config.reward_model_base, task="reward",
                                     trust_remote_code=config.trust_remote_code)
    model.to(device)

    def score(rows: list[Scored]) -> list[float]:
        conversations = [[{"role": role, "content": content} for role, content in r.messages]
                         + [{"role": "assistant", "content": r.completion}] for r in rows]
        return score_texts(model, tokenizer, conversations, device=device)

    return score


class GRPOObjective:
    """The training loop's ``compute_loss`` for GRPO: samples, rewards and
    the loss of a micro-batch of prompts; ``take_metrics`` gives the step's
    mean reward (total, its group spread, and each reward's own), the
    completions' mean length, the KL, and a few sampled completions."""

    def __init__(self, model, tokenizer, settings: GRPOSettings, prompts: dict, rewards: dict, *, reference=None):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.prompts = prompts  # prompt key -> PromptExample
        self.rewards = rewards  # name -> (weight, function), tuning.grpo_rewards.reward_functions
        self.reference = reference
        stops = model.generation_config.eos_token_id if hasattr(model, "generation_config") else None
        stops = stops if isinstance(stops, list) else [stops]
        self.stop_ids = {t for t in stops + [tokenizer.eos_token_id] if t is not None}
        self._pending: list[dict] = []
        self.samples: list[dict] = []  # the last step's first completions: {"prompt", "completion", "reward"}

    def sample(self, prompt_ids, prompt_mask, *, greedy: bool = False):
        """(completion ids, their mask): a sample of each prompt row (the greedy answer where ``greedy``)."""
        import torch

        settings, model = self.settings, self.model
        was_training = model.training
        model.eval()
        decoding = ({"do_sample": False} if greedy else
                    {"do_sample": True, "temperature": settings.temperature, "top_k": 0, "top_p": 1.0})
        with torch.no_grad():
            out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **decoding,
                                 max_new_tokens=settings.max_completion_length,
                                 pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.stop_ids))
        model.train(was_training)
        completion_ids = out[:, prompt_ids.shape[1]:]
        return completion_ids, _completion_mask(completion_ids, self.stop_ids)

    def score(self, keys: list, completion_ids, completion_mask) -> tuple[Any, dict[str, list[float]]]:
        """(each completion's weighted reward, each reward function's own values)."""
        import torch

        texts = self.tokenizer.batch_decode((completion_ids * completion_mask).tolist(), skip_special_tokens=True)
        lengths = completion_mask.sum(dim=1).tolist()
        scored = [Scored(messages=self.prompts[key].messages, completion=text.strip(), tokens=n,
                         reference=self.prompts[key].answer) for key, text, n in zip(keys, texts, lengths)]
        parts = {name: function(scored) for name, (_, function) in self.rewards.items()}
        total = [sum(self.rewards[name][0] * values[i] for name, values in parts.items()) for i in range(len(scored))]
        self.samples = [{"prompt": s.messages[-1][1] if s.messages else "", "completion": s.completion,
                         "reward": round(r, 4)} for s, r in zip(scored[:self.settings.group_size], total)]
        return torch.tensor(total, dtype=torch.float32, device=completion_ids.device), parts

    def __call__(self, inputs: dict):
        import torch

        group = self.settings.group_size
        remax = self.settings.policy_loss == "remax"
        if remax:  # the baseline: the reward of each prompt's greedy answer
            greedy_ids, greedy_mask = self.sample(inputs["input_ids"], inputs["attention_mask"], greedy=True)
            baseline, _ = self.score(inputs["prompt_key"].tolist(), greedy_ids, greedy_mask)
        prompt_ids = inputs["input_ids"].repeat_interleave(group, dim=0)
        prompt_mask = inputs["attention_mask"].repeat_interleave(group, dim=0)
        keys = inputs["prompt_key"].repeat_interleave(group).tolist()
        completion_ids, completion_mask = self.sample(prompt_ids, prompt_mask)
        rewards, parts = self.score(keys, completion_ids, completion_mask)
        if remax:
            advantages = rewards - baseline.repeat_interleave(group)
            # One sample a prompt (the paper's) has no spread: not reported.
            stds = rewards.view(-1, group).std(dim=1) if group > 1 else rewards.new_full((1,), float("nan"))
        else:
            advantages, stds = group_advantages(rewards, group)
        ref = None
        if self.settings.kl_beta:
            adapter = self.reference is None and hasattr(self.model, "disable_adapter")
            off = self.model.disable_adapter() if adapter else contextlib.nullcontext()
            with torch.no_grad(), off:
                ref = completion_logps(self.reference if self.reference is not None else self.model, prompt_ids,
                                       prompt_mask, completion_ids, completion_mask,
                                       temperature=self.settings.temperature)
        logps = completion_logps(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                 temperature=self.settings.temperature)
        objective = remax_loss if remax else grpo_loss
        loss, kl = objective(logps, completion_mask, advantages, kl_beta=self.settings.kl_beta, ref_logps=ref)
        metrics = {"reward_mean": float(rewards.mean()), "reward_std": float(stds.mean()),
                   "completion_length": float(completion_mask.sum(dim=1).float().mean())}
        if remax:
            metrics["reward_baseline"] = float(baseline.mean())
        metrics |= {f"reward_{name}": sum(values) / len(values) for name, values in parts.items()}
        if kl is not None:
            metrics["kl"] = float(kl)
        self._pending.append(metrics)
        return loss

    def take_metrics(self) -> dict:
        """The step's means: reward_mean, reward_std, completion_length, kl, and each reward's mean under
        ``reward_parts``; ``samples``: a few completions of the step's first prompt."""
        pending, self._pending = self._pending, []
        if not pending:
            return {}
        means = {key: round(sum(m[key] for m in pending) / len(pending), 6) for key in pending[0]
                 if all(math.isfinite(m[key]) for m in pending)}
        parts = {key.removeprefix("reward_"): means.pop(key) for key in list(means)
                 if key.startswith("reward_") and key not in ("reward_mean", "reward_std", "reward_baseline")}
        return means | {"reward_parts": parts, "samples": self.samples}
