"""ReMax (arXiv:2310.10505) as the GRPO task's other policy loss: the loss
and its gradient on a fixed batch are the paper's REINFORCE estimate with
the greedy answer's reward as baseline, worked by hand; the settings are
checked; and a short seeded run raises the reward."""

import math
from pathlib import Path

import pytest
import torch

from tests.core.test_grpo import taught_sums
from tuning.config import TrainConfig
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.grpo import remax_loss
from tuning.train import run_train

BASE = {"base_model": "m", "dataset_path": "d.jsonl", "output_dir": "o", "task": "grpo"}


def test_the_loss_and_its_gradient_are_the_papers_estimate_on_a_fixed_batch():
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -4.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # the second completion stopped after two tokens
    rewards, greedy = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    loss, kl = remax_loss(logps, mask, rewards - greedy)
    # −(1/N) Σᵢ (rᵢ − r̄ᵢ) Σₜ log π: −((1 − 0)(−3.5) + (0 − 1)(−1.0)) / 2 = 1.25
    assert loss.item() == pytest.approx(1.25) and kl is None
    loss.backward()
    # ∂/∂ log π(aₜ) = −(rᵢ − r̄ᵢ)/N on every kept token, 0 after the stop.
    assert logps.grad.tolist() == [[-0.5, -0.5, -0.5], [0.5, 0.5, 0.0]]

    reference = torch.tensor([[-1.5, -2.0, -0.5], [-0.3, -0.2, -9.0]])
    with_kl, kl = remax_loss(logps.detach(), mask, rewards - greedy, kl_beta=0.1, ref_logps=reference)
    # k3 = e^(ref − log π) − (ref − log π) − 1 on the kept tokens: 0.5 below on the first, 0.5 above on the fifth.
    k3 = [math.exp(-0.5) + 0.5 - 1, 0, 0, 0, math.exp(0.5) - 0.5 - 1]
    assert kl.item() == pytest.approx(sum(k3) / 5)
    assert with_kl.item() == pytest.approx(1.25 + 0.1 * sum(k3) / 5)


@pytest.mark.parametrize("values, field, words", [
    ({"group_size": 1}, "group_size", "choose the remax policy loss"),
    ({"task": "sft", "policy_loss": "remax"}, "policy_loss", "grpo task only"),
    ({"policy_loss": "ppo"}, "policy_loss", "must be one of: grpo, remax"),
])
def test_settings_that_cannot_work_are_refused_naming_the_field(values, field, words):
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict({**BASE, **values})
    assert words in caught.value.errors[field]


def test_one_completion_a_prompt_is_enough_for_remax():
    assert TrainConfig.from_dict({**BASE, "policy_loss": "remax", "group_size": 1}).group_size == 1


def test_a_short_remax_run_raises_the_exact_match_reward(tiny_model, tmp_path):
    """As GRPO's run in test_grpo.py: a tiny model taught the answers' shape, then ReMax with the
    exact-match reward and two samples a prompt; each step reports its greedy baseline."""
    common, warm = taught_sums(tiny_model, tmp_path)
    sink = MemorySink()
    result = run_train(TrainConfig.from_dict({
        **common, "base_model": warm.output_path, "task": "grpo", "policy_loss": "remax",
        "output_dir": str(tmp_path / "remax"), "max_steps": 8, "batch_size": 9, "learning_rate": 0.02,
        "group_size": 2, "max_completion_length": 4, "seed": 1,
        "method_params": {"rank": 8, "alpha": 16, "dropout": 0.0}}), sink)
    metrics = sink.of_kind("metrics")
    assert result.status == "succeeded" and [m.step for m in metrics] == list(range(1, 9))
    rewards = [m.reward_mean for m in metrics]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:2]) / 2 + 0.05, rewards
    assert all(0.0 <= m.reward_baseline <= 1.0 for m in metrics)
    assert set(metrics[0].reward_parts) == {"exact_match"}
    assert (Path(result.output_path) / "adapter_model.safetensors").exists()
