"""MoLA (mixture of LoRA experts, layer-wise allocation) against its paper's
formulas on small tensors: the per-block expert counts, top-k routing with
renormalised gates, y = W x + (α / r) Σ_{top-k} g_e B_e A_e x, the load-
balancing loss and its gradient; and its saved form, which the studio's
loader puts back on the base and merges and quantization refuse by name."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuning.errors import ConfigError
from tuning.fields import config_from_dict
from tuning.loading import artifact_layout, load_artifact
from tuning.merge.config import MergeConfig
from tuning.merge.sources import resolve_sources
from tuning.methods import METHODS, MethodContext
from tuning.methods.mola import MolaParams, balance_loss, experts_by_block
from tuning.quantize.config import QuantizeConfig
from tuning.quantize.run import check_quantize_source


def _prepared(tiny_model, **settings):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    params = MolaParams(**{"experts": "2,4", "rank": 2, "alpha": 4.0, "dropout": 0.0, **settings})
    return METHODS["mola"].prepare(model, params, MethodContext())


def test_the_presets_use_the_papers_allocation_with_more_experts_in_higher_blocks():
    for preset in METHODS["mola"].presets.values():
        assert config_from_dict(MolaParams, preset["method_params"]).experts == "2,4,6,8"  # MoLA-▽
    assert experts_by_block("2,4,6,8", 32) == [2] * 8 + [4] * 8 + [6] * 8 + [8] * 8  # MoLA-▽ on LLaMA-2 7B
    assert experts_by_block("2,4,6,8", 30) == [2] * 8 + [4] * 8 + [6] * 7 + [8] * 7  # SmolLM2's 30 blocks
    assert experts_by_block("1,2,3", 3) == [1, 2, 3]  # one count per block


def test_each_blocks_layers_get_their_blocks_expert_count(tiny_model):
    model = _prepared(tiny_model)
    for block, experts in ((0, 2), (1, 4)):
        for name in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"):
            layer = model.get_submodule(f"model.layers.{block}.{name}")
            assert layer.router.out_features == experts and layer.lora_A.shape[:2] == (experts, 2)
            assert layer.lora_B.shape == (experts, layer.base.out_features, 2)


def test_the_router_picks_the_top_k_experts_and_renormalises_their_gates(tiny_model):
    layer = _prepared(tiny_model, top_k=2).model.layers[1].self_attn.q_proj  # 4 experts
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[:, 0] = torch.tensor([1.0, 3.0, 0.0, 2.0])  # logits = x₀ · (1, 3, 0, 2)
    x = torch.zeros(1, 32)
    x[0, 0] = 1.0
    probs, chosen, gates = layer.route(x)
    p = torch.softmax(torch.tensor([1.0, 3.0, 0.0, 2.0]), 0)
    torch.testing.assert_close(probs[0], p)
    assert chosen[0].tolist() == [1, 3]
    torch.testing.assert_close(gates[0], torch.stack([p[1], p[3]]) / (p[1] + p[3]))


def test_the_output_is_the_base_plus_the_gated_sum_of_the_chosen_experts(tiny_model):
    layer = _prepared(tiny_model, top_k=2).model.layers[1].mlp.up_proj  # 32 → 64, 4 experts of rank 2
    torch.manual_seed(0)
    with torch.no_grad():
        for p in (layer.router.weight, layer.lora_A, layer.lora_B):
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 3, 32)
    expected = []
    with torch.no_grad():
        for token in x.reshape(-1, 32):
            p = torch.softmax(layer.router.weight @ token, 0)
            top = torch.argsort(p, descending=True)[:2]
            update = sum(p[e] / p[top].sum() * layer.lora_B[e] @ (layer.lora_A[e] @ token) for e in top.tolist())
            expected.append(layer.base.weight @ token + 4.0 / 2 * update)  # alpha / rank
        torch.testing.assert_close(layer(x), torch.stack(expected).reshape(2, 3, 64), rtol=1e-4, atol=1e-4)


def test_the_load_balancing_loss_is_n_times_choice_share_times_mean_probability():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    chosen = torch.tensor([[0], [1]])  # top-1: each token's favourite
    # shares (½, ½, 0), mean probabilities (0.4, 0.4, 0.2): 3 · (0.2 + 0.2) = 1.2
    torch.testing.assert_close(balance_loss(probs, chosen, 3), torch.tensor(1.2))


def test_the_balance_loss_reaches_the_router_as_if_added_to_the_loss(tiny_model):
    x = torch.randn(2, 5, 32)

    def router_gradient(coefficient, add_by_hand):
        torch.manual_seed(0)
        layer = _prepared(tiny_model, balance_coefficient=coefficient).model.layers[1].self_attn.q_proj.train()
        with torch.no_grad():
            layer.lora_B.normal_()
        loss = layer(x).square().mean()
        if add_by_hand:
            probs, chosen, _ = layer.route(x.reshape(-1, 32))
            loss = loss + 0.01 * balance_loss(probs, chosen, 4)
        loss.backward()
        return layer.router.weight.grad

    injected, by_hand, without = router_gradient(0.01, False), router_gradient(0.0, True), router_gradient(0.0, False)
    torch.testing.assert_close(injected, by_hand)
    assert not torch.allclose(injected, without)


def test_a_saved_mola_loads_back_and_merging_or_quantizing_it_is_refused_by_name(tiny_model, tmp_path):
    model = _prepared(tiny_model)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    METHODS["mola"].export(model, tmp_path / "mola")
    assert artifact_layout(tmp_path / "mola") == "mola"
    loaded, _ = load_artifact(tmp_path / "mola", base_model=str(tiny_model))
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)

    merge = MergeConfig.from_dict({"method": "fold", "base_model": str(tiny_model), "output_dir": str(tmp_path / "m"),
                                   "sources": [{"path": str(tmp_path / "mola")}]})
    with pytest.raises(ConfigError) as merging:
        resolve_sources(merge)
    assert "is a MoLA adapter (MoLA (mixture of LoRA experts))" in merging.value.errors["sources.0.path"]
    assert "cannot be folded into the base or merged" in merging.value.errors["sources.0.path"]
    quantize = QuantizeConfig.from_dict({"scheme": "safetensors_bf16", "source_path": str(tmp_path / "mola"),
                                         "base_model": str(tiny_model), "output_dir": str(tmp_path / "q")})
    with pytest.raises(ConfigError) as quantizing:
        check_quantize_source(quantize, on_worker=False)
    assert "is a MoLA adapter (MoLA (mixture of LoRA experts))" in quantizing.value.errors["source_path"]
    assert "cannot be folded into the base or quantized" in quantizing.value.errors["source_path"]
