"""Bottleneck adapters against their papers' formulas on small tensors:
Houlsby/Pfeiffer's h + U f(D h + b_D) + b_U, where each goes, what trains,
and Compacter's PHM weight W = Σᵢ Aᵢ ⊗ (sᵢ tᵢᵀ) with Aᵢ shared model-wide."""

import torch
from transformers import AutoModelForCausalLM

from tuning.loading import artifact_layout, load_artifact
from tuning.methods import METHODS, MethodContext
from tuning.methods.bottleneck import BottleneckParams, phm_weight
from tuning.methods.common import count_parameters


def _prepared(tiny_model, **settings):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    return METHODS["bottleneck"].prepare(model, BottleneckParams(**settings), MethodContext())


def test_the_phm_weight_is_a_sum_of_kronecker_products_of_slow_and_rank_one_fast_matrices():
    slow = torch.stack([torch.eye(2), torch.tensor([[0.0, 1.0], [0.0, 0.0]])])
    s, t = torch.tensor([[1.0, 2.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    # B₁ = s₁t₁ᵀ = [[1, 0], [2, 0]], B₂ = s₂t₂ᵀ = [[0, 0], [3, 4]];
    # A₁ ⊗ B₁ + A₂ ⊗ B₂ = [[B₁, B₂], [0, B₁]].
    expected = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 3.0, 4.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    torch.testing.assert_close(phm_weight(slow, s, t), expected)


def test_an_adapter_adds_up_of_activation_of_down_to_the_sublayer_output(tiny_model):
    model = _prepared(tiny_model, variant="pfeiffer", reduction_factor=16)  # 32 wide → bottleneck of 2
    layer = model.model.layers[0].mlp.down_proj
    x = torch.randn(3, 64)
    torch.testing.assert_close(layer(x), layer.base(x))  # U starts at zero: no change
    with torch.no_grad():
        layer.adapter_down.weight.zero_()
        layer.adapter_down.weight[0, 0], layer.adapter_down.weight[1, 1] = 1.0, -1.0
        layer.adapter_down.bias.copy_(torch.tensor([0.0, 0.5]))
        layer.adapter_up.weight.zero_()
        layer.adapter_up.weight[2, 0], layer.adapter_up.weight[3, 1] = 2.0, 10.0
        layer.adapter_up.bias.fill_(0.25)
    h = torch.zeros(1, 32)
    h[0, 0], h[0, 1] = 3.0, 1.0  # D h + b_D = (3, -1 + 0.5); relu → (3, 0); U · + b_U adds 6 to feature 2
    expected = h + 0.25
    expected[0, 2] += 2.0 * 3.0
    adapter = layer.adapter_up(layer.activation(layer.adapter_down(h)))
    torch.testing.assert_close(h + adapter, expected)
    base_out = layer.base(x)  # and the layer applies it to the frozen sublayer's output
    torch.testing.assert_close(layer(x), base_out + layer.adapter_up(layer.activation(layer.adapter_down(base_out))))


def test_each_variant_adapts_and_trains_what_its_paper_says(tiny_model):
    def trained(variant):
        model = _prepared(tiny_model, variant=variant, reduction_factor=4, phm_dim=4)
        return model, {n for n, p in model.named_parameters() if p.requires_grad}

    _, pfeiffer = trained("pfeiffer")
    assert {n.split(".adapter_")[0] for n in pfeiffer} == {f"model.layers.{i}.mlp.down_proj" for i in (0, 1)}
    _, houlsby = trained("houlsby")
    assert {n.split(".adapter_")[0] for n in houlsby if "adapter_" in n} == {
        f"model.layers.{i}.{p}" for i in (0, 1) for p in ("self_attn.o_proj", "mlp.down_proj")}
    assert {n for n in houlsby if "adapter_" not in n} == {  # Houlsby trains the layer norms too
        f"model.layers.{i}.{norm}.weight" for i in (0, 1) for norm in ("input_layernorm", "post_attention_layernorm")}
    # Per adapter: D (32 → 8) and U (8 → 32) with biases = 2·32·8 + 8 + 32 = 552; 4 adapters; 4 norms of 32.
    model, _ = trained("houlsby")
    assert count_parameters(model)[0] == 4 * 552 + 4 * 32
    # Compacter: one shared n³ = 64 slow tensor; per PHM layer n·(out/n + in/n) + out bias:
    # D: 4·(2 + 8) + 8 = 48, U: 4·(8 + 2) + 32 = 72; 4 adapters; and the norms.
    model, compacter = trained("compacter")
    assert "compacter_slow_weights.weight" in compacter
    assert count_parameters(model)[0] == 64 + 4 * (48 + 72) + 4 * 32
    first, second = model.model.layers[0].self_attn.o_proj, model.model.layers[1].mlp.down_proj
    assert first.adapter_down._slow[0] is second.adapter_up._slow[0] is model.compacter_slow_weights


def test_a_saved_adapter_is_recognised_and_put_back_on_its_base(tiny_model, tmp_path):
    model = _prepared(tiny_model, variant="compacter", reduction_factor=4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    METHODS["bottleneck"].export(model, tmp_path)
    assert artifact_layout(tmp_path) == "bottleneck"
    loaded, _ = load_artifact(tmp_path, base_model=str(tiny_model))
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)
