"""Properties of the whole-model merge rules on small random tensors, one
parametrised row per method where a property applies, and the table."""

import math

import pytest
import torch

from tuning.config import config_to_dict
from tuning.errors import ConfigError
from tuning.merge import GROUPS, MERGE_METHODS, describe
from tuning.merge import breadcrumbs, dare, fisher, model_stock, pcb, slerp, ties
from tuning.merge.config import MergeConfig

MODEL_METHODS = [name for name, method in MERGE_METHODS.items() if method.group == "models"]
# Settings under which a method changes nothing it is given (no dropping, full scaling).
LOSSLESS = {
    "task_arithmetic": {}, "ties": {"density": 1.0}, "dare_linear": {"density": 1.0},
    "dare_ties": {"density": 1.0}, "breadcrumbs": {"density": 1.0, "gamma": 0.0}, "model_stock": {},
    "slerp": {}, "pcb": {"ratio": 1.0}, "fisher": {}, "della": {"density": 1.0}, "della_linear": {"density": 1.0},
    "sce": {}, "wise_ft": {"alpha": 1.0}, "atlas": {},
}


def params(name: str, **overrides):
    method = MERGE_METHODS[name]
    return method.params(**{**LOSSLESS[name], **overrides})


def merge(name: str, base, tensors, weights, **overrides):
    method = MERGE_METHODS[name]
    tensors = [t.clone() for t in tensors]
    if name == "fisher":
        return fisher.merge_tensors(base.clone(), tensors, weights, params(name, **overrides),
                                    fishers=[torch.ones_like(base) for _ in tensors])
    return method.merge_tensors(base.clone(), tensors, weights, params(name, **overrides))


@pytest.fixture
def tensors():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(16, 12, generator=generator)
    return base, [base + 0.1 * torch.randn(16, 12, generator=generator) for _ in range(3)]


def test_every_model_method_has_a_row():
    assert set(LOSSLESS) == set(MODEL_METHODS)


@pytest.mark.parametrize("name", [n for n in MODEL_METHODS if MERGE_METHODS[n].min_sources == 1])
def test_merging_one_model_returns_it(name, tensors):
    base, (model, *_) = tensors
    torch.testing.assert_close(merge(name, base, [model], [1.0]), model)


@pytest.mark.parametrize("name", MODEL_METHODS)
def test_identical_models_with_weights_summing_to_one_give_the_model(name, tensors):
    base, (model, *_) = tensors
    torch.testing.assert_close(merge(name, base, [model, model], [0.3, 0.7]), model)


def test_task_arithmetic_adds_weighted_task_vectors(tensors):
    base, (a, b, _) = tensors
    merged = merge("task_arithmetic", base, [a, b], [1.0, -0.5], scaling=0.8)
    torch.testing.assert_close(merged, base + 0.8 * ((a - base) - 0.5 * (b - base)))


def test_ties_keeps_only_values_that_agree_with_the_elected_sign():
    base = torch.zeros(6)
    a = torch.tensor([1.0, -2.0, 3.0, 0.0, -1.0, 0.5])
    b = torch.tensor([-3.0, -1.0, 1.0, 2.0, 4.0, 0.5])
    merged = ties.merge_tensors(base, [a.clone(), b.clone()], [1.0, 1.0], ties.TiesParams(density=1.0))
    # signs of the sums: -, -, +, +, +, +; the disjoint mean averages agreeing entries only.
    torch.testing.assert_close(merged, torch.tensor([-3.0, -1.5, 2.0, 2.0, 4.0, 0.5]))


def test_ties_trims_each_task_vector_to_its_largest_entries():
    base = torch.zeros(10)
    a = torch.arange(1.0, 11.0)
    merged = ties.merge_tensors(base, [a.clone()], [1.0], ties.TiesParams(density=0.3))
    torch.testing.assert_close(merged, torch.tensor([0.0] * 7 + [8.0, 9.0, 10.0]))


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_keeps_the_expected_value_of_the_task_vector(name):
    base = torch.zeros(200_000)
    delta = torch.full((200_000,), 0.5)
    p = params(name, density=0.2)
    merged = MERGE_METHODS[name].merge_tensors(base, [delta.clone()], [1.0], p,
                                               generator=torch.Generator().manual_seed(1))
    assert abs((merged != 0).float().mean().item() - 0.2) < 0.01  # 80% dropped
    assert set(merged.unique().tolist()) == {0.0, 2.5}  # survivors rescaled by 1/0.2
    assert abs(merged.mean().item() - 0.5) < 0.01


def test_darex_q_rescales_by_one_over_q():
    p = dare.DareParams(density=0.1, rescale_q=0.25)
    merged = dare.merge_tensors(torch.zeros(1000), [torch.ones(1000)], [1.0], p,
                                generator=torch.Generator().manual_seed(0))
    assert set(merged.unique().tolist()) == {0.0, 4.0}
    assert dare.check(dare.DareParams(density=0.5, rescale_q=0.2)) and not dare.check(p)


def test_dare_is_reproducible_per_seed_and_tensor_name():
    from tuning.merge.common import tensor_generator

    draw = lambda seed, name: torch.rand(5, generator=tensor_generator(seed, name))
    assert torch.equal(draw(0, "a.weight"), draw(0, "a.weight"))
    assert not torch.equal(draw(0, "a.weight"), draw(0, "b.weight"))
    assert not torch.equal(draw(0, "a.weight"), draw(1, "a.weight"))


def test_slerp_endpoints_and_norm(tensors):
    base, (a, b, _) = tensors
    torch.testing.assert_close(merge("slerp", base, [a, b], [], t=0.0), a)
    torch.testing.assert_close(merge("slerp", base, [a, b], [], t=1.0), b)
    x, y = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    middle = slerp.slerp(x.clone(), y.clone(), 0.5)
    torch.testing.assert_close(middle, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))  # on the arc, norm 1


def test_breadcrumbs_drops_the_largest_and_smallest_magnitudes():
    delta = torch.tensor([5.0, -1.0, 3.0, -10.0, 2.0, 0.5, -4.0, 6.0, 0.1, 7.0])
    merged = breadcrumbs.merge_tensors(torch.zeros(10), [delta.clone()], [1.0],
                                       breadcrumbs.BreadcrumbsParams(density=0.6, gamma=0.2))
    # |values| ascending: 0.1 0.5 1 2 3 4 5 6 7 10 -> drop the two largest (10, 7) and the two smallest (0.1, 0.5)
    expected = torch.tensor([5.0, -1.0, 3.0, 0.0, 2.0, 0.0, -4.0, 6.0, 0.0, 0.0])
    torch.testing.assert_close(merged, expected)
    assert breadcrumbs.check(breadcrumbs.BreadcrumbsParams(density=0.9, gamma=0.2))


@pytest.mark.parametrize("cos, n, t", [(0.0, 2, 0.0), (1.0, 2, 1.0), (0.5, 2, 2 / 3), (0.5, 3, 0.75), (-0.3, 2, 0.0)])
def test_model_stock_interpolation_ratio(cos, n, t):
    assert model_stock.interpolation_ratio(cos, n) == pytest.approx(t)


def test_model_stock_moves_towards_the_average_by_the_ratio():
    base = torch.zeros(2)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5 * math.sqrt(3)])  # 60°: cos 0.5, t = 2/3
    merged = model_stock.merge_tensors(base, [a.clone(), b.clone()], [], model_stock.ModelStockParams())
    torch.testing.assert_close(merged, (a + b) / 2 * (2 / 3))
    orthogonal = model_stock.merge_tensors(base, [a.clone(), torch.tensor([0.0, 1.0])], [],
                                           model_stock.ModelStockParams())
    torch.testing.assert_close(orthogonal, base)


def test_pcb_is_an_importance_weighted_average_of_the_kept_entries(tensors):
    base, models = tensors
    deltas = [m - base for m in models]
    merged = merge("pcb", base, models, [], ratio=0.5) - base
    stacked = torch.stack(deltas)
    # a convex combination of the (kept) task-vector entries, or 0 where none was kept
    inside = (merged >= stacked.min(0).values - 1e-6) & (merged <= stacked.max(0).values + 1e-6)
    assert bool((inside | (merged == 0)).all())
    # with one source, the entries it keeps are exactly the most important half
    single = pcb.merge_tensors(base.clone(), [models[0].clone()], [], pcb.PcbParams(ratio=0.5)) - base
    assert (single != 0).sum().item() == deltas[0].numel() // 2
    kept = deltas[0].abs()[single != 0].min()
    assert kept >= deltas[0].abs()[single == 0].max()  # one source: importance rises with |τ|


def test_pcb_prefers_entries_the_sources_agree_on():
    base = torch.zeros(4)
    a = torch.tensor([1.0, 1.0, 0.2, 0.2])
    b = torch.tensor([1.0, -1.0, 0.2, -0.2])
    merged = pcb.merge_tensors(base, [a.clone(), b.clone()], [], pcb.PcbParams(ratio=1.0))
    torch.testing.assert_close(merged[0], torch.tensor(1.0))  # agreeing: kept as is
    assert abs(merged[1].item()) < 1.0 and abs(merged[1].item()) < abs(merged[0].item())


def test_fisher_with_equal_fishers_is_the_weighted_average(tensors):
    base, (a, b, _) = tensors
    merged = fisher.merge_tensors(base, [a.clone(), b.clone()], [1.0, 3.0], fisher.FisherParams(),
                                  fishers=[torch.full_like(a, 2.0), torch.full_like(a, 2.0)])
    torch.testing.assert_close(merged, (a + 3 * b) / 4)


def test_fisher_follows_the_model_that_cares():
    a, b = torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0])
    merged = fisher.merge_tensors(None, [a, b], [1.0, 1.0], fisher.FisherParams(fisher_floor=0.0),
                                  fishers=[torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])
    torch.testing.assert_close(merged, torch.tensor([1.0, 3.0]))


def test_fisher_estimate_is_the_mean_squared_gradient():
    model = torch.nn.Linear(2, 1, bias=False)
    model.weight.data = torch.tensor([[1.0, 2.0]])

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return type("Out", (), {"loss": self.inner(x).sum()})()

    rows = [{"x": torch.tensor([[1.0, 0.0]])}, {"x": torch.tensor([[3.0, 1.0]])}]
    estimate = fisher.estimate_fisher(Wrapper(), rows)
    torch.testing.assert_close(estimate["inner.weight"], torch.tensor([[(1 + 9) / 2, (0 + 1) / 2]]))


def test_table_rows_are_complete_and_describable():
    for name, method in MERGE_METHODS.items():
        row = describe(method)
        assert row["name"] == name and method.group in GROUPS and method.produces in ("model", "adapter")
        assert "https://" in method.paper and method.description
        assert config_to_dict(method.params()) == {p["name"]: p["default"] for p in row["params"]}
        assert all(p["help"] for p in row["params"])
    assert {p["name"] for p in describe(MERGE_METHODS["ties"])["params"]} == {"density", "scaling", "sign_method"}


def test_config_rejects_unknown_keys_and_collects_every_error():
    with pytest.raises(ConfigError) as caught:
        MergeConfig.from_dict({"method": "slerp", "sources": ["a", {"path": "b", "weight": "heavy"}, "c"],
                               "base_model": "base", "output_dir": "out", "colour": "red", "dtype": "int4",
                               "method_params": {"t": 2}})
    assert set(caught.value.errors) == {"colour", "dtype", "sources.1.weight", "method_params.t"}
    with pytest.raises(ConfigError) as caught:
        MergeConfig.from_dict({"method": "slerp", "sources": ["a", "b", "c"], "base_model": "base",
                               "output_dir": "out"})
    assert "at most 2" in caught.value.errors["sources"]
    with pytest.raises(ConfigError) as caught:
        MergeConfig.from_dict({"method": "fisher", "sources": ["a"], "base_model": "base", "output_dir": "out"})
    assert "dataset_path" in caught.value.errors
    config = MergeConfig.from_dict({"method": "ties", "sources": ["a", {"path": "b", "weight": 2}],
                                    "base_model": "base", "output_dir": "out"})
    assert config.sources[1] == {"path": "b", "weight": 2.0, "base": ""}
    assert config.method_params == {"density": 0.2, "scaling": 1.0, "sign_method": "total"}


def test_the_chunked_threshold_search_matches_kthvalue(monkeypatch):
    from tuning.merge import common

    monkeypatch.setattr(common, "KTHVALUE_LIMIT", 100)
    monkeypatch.setattr(common, "CHUNK", 4096)
    values = torch.randn(20_000, generator=torch.Generator().manual_seed(3))
    for keep in (1, 37, 4000, 19_999):
        expected = torch.kthvalue(values.abs(), values.numel() - keep + 1).values.item()
        assert common.magnitude_threshold(values, keep) == expected
    trimmed = common.keep_top_magnitude_(values.clone(), 0.25)
    assert (trimmed != 0).sum().item() == 5000
