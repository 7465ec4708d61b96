"""EigenLoRAx: the principal subspace of the source adapters reconstructs
them within its explained-variance bound; only the coefficients train; the
saved adapter is a stock peft LoRA giving the logits the trained model gave;
sources that are too few, of other bases or not LoRA are refused by name."""

import json
import shutil

import pytest
import torch
from transformers import AutoConfig

from tests.core.test_methods import batch, load, prepared  # noqa: F401  (fixture)
from tests.tiny_model import tiny_lora_sources
from tuning.fields import config_from_dict
from tuning.methods import METHODS, eigenlora

RANK = 4


@pytest.fixture(scope="module")
def sources() -> str:
    return ",".join(str(path) for path in tiny_lora_sources())


@pytest.mark.parametrize("explained", [0.5, 0.9, 0.99])
def test_the_subspace_reconstructs_the_sources_within_the_explained_variance(sources, explained):
    stacks = eigenlora.stacked_sources(eigenlora.EigenloraParams(source_adapters=sources))
    assert len(stacks) == 14  # the 7 linear layers of each of the 2 blocks, adapted by all three sources
    for name, (a_rows, b_columns) in stacks.items():
        assert a_rows.shape[0] == b_columns.shape[0] == 3 * RANK  # every source's rank-4 matrices, stacked
        for stack in (a_rows, b_columns):
            components, share = eigenlora.principal_components(stack, explained)
            assert share >= explained and components.shape[0] <= 6  # the sources were built near 6 dimensions
            kept = stack.float() @ components.T @ components  # each row projected onto the subspace
            error = float((stack.float() - kept).square().sum() / stack.float().square().sum())
            assert error <= 1 - explained + 1e-5, (name, error)
            assert error == pytest.approx(1 - share, abs=1e-5)  # exactly the variance left out
            torch.testing.assert_close(components @ components.T, torch.eye(len(components)), atol=1e-5, rtol=0)


def test_a_fixed_k_and_extra_orthogonal_components(sources):
    plain = eigenlora.subspaces(eigenlora.EigenloraParams(source_adapters=sources))
    fixed = eigenlora.subspaces(eigenlora.EigenloraParams(source_adapters=sources, components=2))
    extra = eigenlora.subspaces(eigenlora.EigenloraParams(source_adapters=sources, extra_components=3))
    for name, pair in plain.items():
        for few, two, more in zip(pair, fixed[name], extra[name]):
            torch.testing.assert_close(two, few[:2])  # the leading components, whatever K
            assert len(more) == len(few) + 3
            torch.testing.assert_close(more[:len(few)], few)
            torch.testing.assert_close(more @ more.T, torch.eye(len(more)), atol=1e-5, rtol=0)


def test_only_the_coefficients_get_gradients(sources, tiny_model, batch):  # noqa: F811
    params = {"source_adapters": sources, "rank": RANK}
    _, method_params, model = prepared("eigenlora", params, tiny_model, batch)
    spaces = eigenlora.subspaces(method_params)
    model.train()
    model(**batch).loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert with_grad == trainable and all(name.endswith("parametrizations.weight.original") for name in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == sum(
        RANK * (len(a) + len(b)) for a, b in spaces.values())
    # Each LoRA matrix is its coefficients times the fixed components.
    layer = model.base_model.model.get_submodule(next(iter(spaces)))
    a_components, b_components = spaces[next(iter(spaces))]
    torch.testing.assert_close(layer.lora_A["default"].weight,
                               layer.lora_A["default"].parametrizations.weight.original @ a_components)
    torch.testing.assert_close(layer.lora_B["default"].weight,
                               b_components.T @ layer.lora_B["default"].parametrizations.weight.original)


def test_the_saved_adapter_is_stock_lora_giving_the_trained_logits(sources, tiny_model, batch, tmp_path):  # noqa: F811
    from peft import PeftModel

    method, _, model = prepared("eigenlora", {"source_adapters": sources, "rank": RANK}, tiny_model, batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        in_training = model.eval()(**inputs).logits  # still coefficients times components
    method.export(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == RANK
    stock = PeftModel.from_pretrained(load(tiny_model), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(**inputs).logits, in_training, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(load(tiny_model)(**inputs).logits, in_training, atol=1e-4)  # it learned
        folded = stock.merge_and_unload()(**inputs).logits
    torch.testing.assert_close(folded, in_training, rtol=1e-4, atol=1e-4)


def refusal(source_adapters: str, tiny_model) -> dict:
    method = METHODS["eigenlora"]
    params = config_from_dict(method.params, {"source_adapters": source_adapters})
    return method.check(params, AutoConfig.from_pretrained(tiny_model), "sft")


def test_too_few_sources_other_bases_and_other_adapters_are_refused_by_name(sources, tiny_model, tmp_path):
    first, second = sources.split(",")[:2]
    assert "at least 2 LoRA adapters; got 1" in refusal(first, tiny_model)["source_adapters"]

    other_base = tmp_path / "other-base"
    shutil.copytree(second, other_base)
    config = json.loads((other_base / "adapter_config.json").read_text())
    (other_base / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "acme/other"}))
    problem = refusal(f"{first},{other_base}", tiny_model)["source_adapters"]
    assert "different base models" in problem and "acme/other" in problem

    loha = tmp_path / "loha"
    shutil.copytree(second, loha)
    (loha / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LOHA"}))
    problem = refusal(f"{first},{loha}", tiny_model)["source_adapters"]
    assert "loha is a LOHA adapter; EigenLoRAx takes plain LoRA adapters" in problem
    assert "not an adapter directory" in refusal(f"{first},{tmp_path}", tiny_model)["source_adapters"]
    assert refusal(sources, tiny_model) == {}
