"""LN-DPO (length-normalised DPO, arXiv:2407.15229): the loss on a fixed
batch is the paper's formula worked by hand, it differs from DPO's where
the replies' lengths differ, and a short run with it trains."""

import math

import pytest
import torch

from tests.core.test_preference_training import PAIRS, config, pairs_jsonl  # noqa: F401  (fixture)
from tuning.events import MemorySink
from tuning.preference import PreferenceSettings, pair_loss
from tuning.train import run_train

# Two pairs, chosen replies first: summed log-probabilities, token counts and the reference's sums.
SUMMED = torch.tensor([-10.0, -4.0, -30.0, -9.0])
COUNTS = torch.tensor([5.0, 2.0, 10.0, 3.0])
REFERENCE = torch.tensor([-12.0, -5.0, -27.0, -8.0])


def test_the_loss_is_the_papers_formula_on_a_fixed_batch():
    # −log σ(β·(Δ_w/|y_w| − Δ_l/|y_l|)), Δ the log-ratio against the reference, by hand:
    # pair 1: Δ_w = 2 over 5 tokens, Δ_l = −3 over 10: 0.4 + 0.3 = 0.7
    # pair 2: Δ_w = 1 over 2 tokens, Δ_l = −1 over 3: 0.5 + 1/3
    beta = 0.1
    by_hand = [math.log1p(math.exp(-beta * 0.7)), math.log1p(math.exp(-beta * (0.5 + 1 / 3)))]
    loss, metrics = pair_loss(PreferenceSettings(loss="ln_dpo", beta=beta), SUMMED, COUNTS, REFERENCE)
    assert loss.item() == pytest.approx(sum(by_hand) / 2, rel=1e-6)
    # The rewards are the length-normalised ones, β·Δ/|y|.
    assert metrics["rewards_chosen"].item() == pytest.approx(beta * (0.4 + 0.5) / 2, rel=1e-6)
    assert metrics["rewards_rejected"].item() == pytest.approx(beta * (-0.3 - 1 / 3) / 2, rel=1e-6)
    dpo, _ = pair_loss(PreferenceSettings(loss="dpo", beta=beta), SUMMED, COUNTS, REFERENCE)
    # DPO on the summed ratios: β·(2 + 3) and β·(1 + 1).
    assert dpo.item() == pytest.approx((math.log1p(math.exp(-0.5)) + math.log1p(math.exp(-0.2))) / 2, rel=1e-6)


def test_a_short_ln_dpo_run_widens_the_margin(tiny_model, pairs_jsonl, tmp_path):  # noqa: F811
    sink = MemorySink()
    result = run_train(config(tiny_model, pairs_jsonl, tmp_path, preference_loss="ln_dpo", beta=1.0), sink)
    metrics = sink.of_kind("metrics")
    assert result.status == "succeeded" and len(PAIRS) == 12
    assert metrics[0].loss == pytest.approx(math.log(2), abs=1e-5)  # the policy starts as the reference
    assert metrics[-1].loss < metrics[0].loss and metrics[-1].reward_margin > metrics[0].reward_margin
    assert metrics[-1].reward_accuracy == 1.0
