"""LoRA's sparse input dropout (tuning/sparse_dropout.py) has nn.Dropout's
distribution: each entry dropped with probability p, independently, the
kept ones scaled by 1 / (1 − p), gradients through the kept ones only; and
``use_sparse_dropout`` swaps it in for peft's dropout (the training loop does not: BENCHMARKS.md, levers)."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuning.methods import METHODS, MethodContext
from tuning.sparse_dropout import dropped_positions, sparse_dropout_class, use_sparse_dropout


def test_each_position_is_dropped_at_rate_p_independently_of_the_others():
    """Over 20,000 draws of 7 positions (the loop that draws more gaps runs too): each
    position's rate is p, the number dropped per draw follows Binomial(7, p) (chi-square),
    and a drop at one position says nothing about the next (pairs at p²)."""
    p, count, draws = 0.2, 7, 20_000
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(draws, count, dtype=torch.bool)
    for row in range(draws):
        positions = dropped_positions(count, p, generator=generator)
        assert torch.all(positions[1:] > positions[:-1]) and (positions.numel() == 0 or 0 <= positions[0])
        masks[row, positions] = True
    rate_sd = math.sqrt(p * (1 - p) / draws)
    assert torch.all((masks.float().mean(0) - p).abs() < 5 * rate_sd), masks.float().mean(0)
    pairs = (masks[:, :-1] & masks[:, 1:]).float().mean()
    assert abs(pairs - p * p) < 5 * math.sqrt(p * p * (1 - p * p) / draws), pairs
    observed = torch.bincount(masks.sum(1), minlength=count + 1).double()
    expected = torch.tensor([math.comb(count, k) * p ** k * (1 - p) ** (count - k) for k in range(count + 1)]) * draws
    chi_square = float(((observed - expected) ** 2 / expected).sum())
    assert chi_square < 24.3, (observed, expected)  # the 0.999 quantile of chi-square with 7 degrees of freedom


def test_kept_entries_are_scaled_and_only_they_carry_gradient():
    torch.manual_seed(0)
    p = 0.05
    dropout = sparse_dropout_class()(p=p).train()
    x = (torch.rand(64, 333) + 0.5).requires_grad_(True)  # no zeros: a zero in the output means dropped
    out = dropout(x)
    dropped = out == 0
    assert abs(dropped.float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / x.numel())
    torch.testing.assert_close(out[~dropped], x[~dropped] / (1 - p))
    out.sum().backward()
    expected = torch.where(dropped, 0.0, 1 / (1 - p))
    torch.testing.assert_close(x.grad, expected)
    assert torch.equal(dropout.eval()(x), x)  # evaluation: the identity, as nn.Dropout


def test_a_lora_model_gets_sparse_dropout_with_the_same_rate(tiny_model):
    method = METHODS["lora"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = method.prepare(model, method.params(rank=4, dropout=0.1, target_modules="q_proj,v_proj"),
                           MethodContext(total_steps=1, base_model=str(tiny_model)))
    dense = [m for m in model.modules() if type(m) is torch.nn.Dropout]
    assert dense and all(m.p == 0.1 for m in dense)
    assert use_sparse_dropout(model) == len(dense)
    sparse = [m for m in model.modules() if isinstance(m, sparse_dropout_class())]
    assert len(sparse) == len(dense) and all(m.p == 0.1 for m in sparse)
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    model.train()
    loss = model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_dropout_that_the_sparse_draw_would_not_speed_up_is_left_alone(tiny_model, p):
    method = METHODS["lora"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = method.prepare(model, method.params(rank=4, dropout=p, target_modules="q_proj"),
                           MethodContext(total_steps=1, base_model=str(tiny_model)))
    assert use_sparse_dropout(model) == 0
