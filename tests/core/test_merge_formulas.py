"""The second wave of merge rules against their papers' formulas on small
tensors with hand-computed expectations (DELLA, SCE, WiSE-FT), DARE-TIES'
normalise setting, the float64 cosines of SLERP and Model Stock, and the
presets every method offers."""

import math

import pytest
import torch

from tuning.fields import config_from_dict
from tuning.merge import MERGE_METHODS, dare, della, describe, model_stock, sce, slerp, wise_ft
from tuning.merge.common import tensor_generator
from tuning.merge.config import MergeConfig


def near_parallel(size: int):
    """Two tensors at cos ≈ 0.999 (just inside SLERP's arc), like the
    weights of a model and its fine-tune."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, generator=generator) + 3.0
    return a, a + 0.14 * torch.randn(size, generator=generator)


def slerp64(a, b, t: float):
    a, b = a.double(), b.double()
    angle = math.acos(float(a.dot(b) / (a.norm() * b.norm())))
    return (a * math.sin((1 - t) * angle) + b * math.sin(t * angle)) / math.sin(angle)


def slerp_with_fp32_dot(a, b, t: float):
    """The rule as it was: cosine from an fp32 dot product."""
    angle = math.acos(float(torch.dot(a, b) / (a.norm() * b.norm())))
    return (a * math.sin((1 - t) * angle) + b * math.sin(t * angle)) / math.sin(angle)


def relative_error(x, reference) -> float:
    return float((x.double() - reference).norm() / reference.norm())


def test_slerp_matches_a_float64_reference_where_an_fp32_dot_does_not():
    a, b = near_parallel(1 << 22)
    reference = slerp64(a, b, 0.3)
    merged = slerp.slerp(a.clone(), b.clone(), 0.3)
    fp32_error = relative_error(slerp_with_fp32_dot(a, b, 0.3), reference)
    error = relative_error(merged, reference)
    # fp32 rounding of the weights themselves leaves ~6e-8; the fp32 dot adds ~2e-6 at 4M entries.
    assert error < 2e-7 and fp32_error > 5 * error, (error, fp32_error)


def test_model_stock_cosine_is_accumulated_in_float64():
    a, b = near_parallel(1 << 22)
    reference = float(a.double().dot(b.double()) / (a.double().norm() * b.double().norm()))
    fp32 = float(torch.dot(a, b) / (a.norm() * b.norm()))
    assert abs(model_stock.mean_cosine([a, b]) - reference) < 1e-12 < abs(fp32 - reference)


# DARE-TIES at density 1 (nothing dropped) is TIES' elect and merge: by hand,
# Σ w·τ = [2.5, -1, 3.5, 2] elects + - + +; the agreeing entries average
# (normalise) or add up (mergekit's default) with weights 1 and 0.5.
DARE_A, DARE_B = torch.tensor([1.0, -2.0, 3.0, 0.0]), torch.tensor([3.0, 2.0, 1.0, 4.0])


@pytest.mark.parametrize("normalize, expected", [(True, [5 / 3, -2.0, 7 / 3, 4.0]), (False, [2.5, -2.0, 3.5, 2.0])])
def test_dare_ties_normalise_divides_by_the_agreeing_weights(normalize, expected):
    params = dare.DareTiesParams(density=1.0, normalize=normalize)
    merged = dare.merge_tensors(torch.zeros(4), [DARE_A.clone(), DARE_B.clone()], [1.0, 0.5], params)
    torch.testing.assert_close(merged, torch.tensor(expected))


def test_the_normalise_setting_reaches_config_and_catalogue_and_names_mergekits_value():
    described = {p["name"]: p for p in describe(MERGE_METHODS["dare_ties"])["params"]}
    assert described["normalize"]["default"] is True
    assert "mergekit's default for this method is off" in described["normalize"]["help"]
    config = MergeConfig.from_dict({"method": "dare_ties", "sources": ["a"], "base_model": "b", "output_dir": "o",
                                    "method_params": {"normalize": False}})
    assert config.method_params["normalize"] is False
    della_help = {p["name"]: p for p in describe(MERGE_METHODS["della"])["params"]}["normalize"]["help"]
    assert "mergekit's default for this method is on" in della_help


def test_della_keep_probabilities_follow_the_rank_in_the_row():
    row = torch.tensor([[0.1, -0.4, 0.2, 0.3]])  # ranks by |value|: 0, 3, 1, 2
    probabilities = della.keep_probabilities(row, density=0.5, epsilon=0.2)
    torch.testing.assert_close(probabilities, torch.tensor([[0.3, 0.7, 0.3 + 0.4 / 3, 0.3 + 0.8 / 3]]))


def test_della_keeps_large_changes_more_often_and_the_expected_task_vector():
    rows, columns = 400, 1000
    delta = torch.linspace(0.01, 1.0, columns).repeat(rows, 1)  # each row ranks its columns the same way
    params = della.DellaLinearParams(density=0.5, epsilon=0.2, rescale="probability")
    merged = della.merge_tensors(torch.zeros(rows, columns), [delta.clone()], [1.0], params,
                                 generator=torch.Generator().manual_seed(0))
    kept = (merged != 0).float()
    assert abs(kept.mean().item() - 0.5) < 0.01  # density on average
    assert abs(kept[:, :100].mean().item() - 0.31) < 0.02 and abs(kept[:, -100:].mean().item() - 0.69) < 0.02
    # each survivor divided by its keep probability: the column means estimate the task vector
    block_means = merged.reshape(rows, 10, columns // 10).mean(dim=(0, 2))
    torch.testing.assert_close(block_means, delta[0].reshape(10, -1).mean(1), rtol=0.04, atol=0.0)
    assert abs(merged.sum().item() / delta.sum().item() - 1) < 0.01


def test_della_l1_rescale_keeps_the_l1_norm_and_none_keeps_the_survivors():
    delta = torch.randn(64, 48, generator=torch.Generator().manual_seed(1))
    l1 = della.magprune_(delta.clone(), 0.4, 0.1, "l1", torch.Generator().manual_seed(2))
    assert l1.abs().sum().item() == pytest.approx(delta.abs().sum().item(), rel=1e-5)
    plain = della.magprune_(delta.clone(), 0.4, 0.1, "none", torch.Generator().manual_seed(2))
    assert torch.equal(plain != 0, l1 != 0)  # same draws
    assert torch.equal(plain[plain != 0], delta[plain != 0])


def test_della_ties_elects_signs_and_is_reproducible_per_tensor_name():
    base = torch.zeros(8, 16)
    sources = [torch.randn(8, 16, generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    params = della.DellaParams(density=0.5, epsilon=0.1, rescale="none")

    def run(name):
        return della.merge_tensors(base.clone(), [s.clone() for s in sources], [1.0, 1.0], params,
                                   generator=tensor_generator(0, name))

    merged = run("w")
    assert torch.equal(merged, run("w")) and not torch.equal(merged, run("v"))
    # every merged entry is one source's entry or the mean of two that agree in sign
    a, b = sources
    candidates = torch.stack([a, b, (a + b) / 2, torch.zeros_like(a)])
    assert bool(((candidates - merged).abs() < 1e-6).any(0).all())


@pytest.mark.parametrize("density, epsilon, refused", [(0.5, 0.15, False), (0.1, 0.1, True), (0.9, 0.15, True),
                                                       (1.0, 0.3, False), (0.0, 0.0, True)])
def test_della_refuses_keep_probabilities_outside_zero_one(density, epsilon, refused):
    assert bool(della.check(della.DellaParams(density=density, epsilon=epsilon))) == refused


SCE_A, SCE_B = torch.tensor([1.0, 2.0, -1.0, 0.5]), torch.tensor([3.0, -2.0, -1.0, 0.5])


def test_sce_weighs_each_model_by_its_mean_square_and_erases_minority_signs():
    merged = sce.merge_tensors(torch.zeros(4), [SCE_A.clone(), SCE_B.clone()], [], sce.SceParams())
    c_a, c_b = 1.5625 / 5.125, 3.5625 / 5.125  # mean squares (6.25 / 4 and 14.25 / 4), normalised
    # signs of the sum [4, 0, -2, 1]: + + - +; position 1 keeps only A's +2
    torch.testing.assert_close(merged, torch.tensor([c_a * 1 + c_b * 3, 2.0, -1.0, 0.5]))


def test_sce_select_keeps_the_positions_that_vary_most():
    # variances across the two: [1, 4, 0, 0]; two vary, so top 50% keeps position 1 alone
    merged = sce.merge_tensors(torch.zeros(4), [SCE_A.clone(), SCE_B.clone()], [], sce.SceParams(select_topk=0.5))
    torch.testing.assert_close(merged, torch.tensor([0.0, 2.0, 0.0, 0.0]))  # sum 0 elects +, equal weights
    assert sce.check(sce.SceParams(select_topk=0.0)) and not sce.check(sce.SceParams(select_topk=0.1))


@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_wise_ft_interpolates_between_base_and_fine_tune(alpha):
    base, tuned = torch.tensor([1.0, -2.0, 4.0]), torch.tensor([3.0, 2.0, 0.0])
    merged = wise_ft.merge_tensors(base.clone(), [tuned.clone()], [1.0], wise_ft.WiseFtParams(alpha=alpha))
    torch.testing.assert_close(merged, (1 - alpha) * base + alpha * tuned)


@pytest.mark.parametrize("name", [name for name, method in MERGE_METHODS.items() if method.presets])
def test_every_preset_is_a_valid_setting_of_its_method(name):
    method = MERGE_METHODS[name]
    for preset, values in method.presets.items():
        params = config_from_dict(method.params, values)
        assert not (method.check and method.check(params)), (name, preset)


def test_the_new_methods_have_presets():
    for name in ("della", "della_linear", "sce", "wise_ft", "lora_wise_ft", "dare_ties"):
        assert len(MERGE_METHODS[name].presets) >= 2


def test_docs_methods_lists_every_merge_method():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "METHODS.md").read_text()
    section = text.partition("## Merge methods")[2]
    missing = [name for name in MERGE_METHODS if not re.search(rf"\b{name}\b", section)]
    assert not missing
