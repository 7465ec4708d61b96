"""ETHER and ETHER+ against the paper's formulas (Bini et al., 2024,
arXiv:2405.20271) on small tensors with hand-computed expectations."""

import pytest
import torch

from tuning.methods import METHODS, MethodContext
from tuning.methods.ether import EtherParams, reflect, transform_matrix


def test_an_ether_block_is_the_householder_reflection_of_its_vector():
    # u = (3, 4): û = (0.6, 0.8), H = I - 2ûûᵀ = [[1 - 0.72, -0.96], [-0.96, 1 - 1.28]].
    h = transform_matrix(torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(h, torch.tensor([[0.28, -0.96], [-0.96, -0.28]]))
    torch.testing.assert_close(h @ h.T, torch.eye(2))  # orthogonal
    torch.testing.assert_close(h @ torch.tensor([3.0, 4.0]), torch.tensor([-3.0, -4.0]))  # the normal flips
    torch.testing.assert_close(h @ torch.tensor([4.0, -3.0]), torch.tensor([4.0, -3.0]))  # the hyperplane stays
    # Always exactly 2 from the identity (Frobenius), whatever u is: the paper's bounded distance.
    for u in (torch.tensor([[3.0, 4.0]]), torch.tensor([[1e-3, -7.0]])):
        assert torch.linalg.matrix_norm(transform_matrix(u) - torch.eye(2)).item() == pytest.approx(2.0)


def test_blocks_reflect_their_own_slice_of_the_features():
    # Two blocks of width 2: u₁ = (1, 0) flips feature 0, u₂ = (0, 2) flips feature 3.
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    torch.testing.assert_close(transform_matrix(u), torch.diag(torch.tensor([-1.0, 1.0, 1.0, -1.0])))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(reflect(x, u), torch.tensor([[-1.0, 2.0, 3.0, -4.0]]))


def test_ether_plus_is_i_minus_uut_plus_vvt_and_starts_as_the_identity():
    # û = e₁, v̂ = e₂: H⁺ = I - e₁e₁ᵀ + e₂e₂ᵀ = diag(0, 2).
    u, v = torch.tensor([[5.0, 0.0]]), torch.tensor([[0.0, -1.0]])
    torch.testing.assert_close(transform_matrix(u, v), torch.tensor([[0.0, 0.0], [0.0, 2.0]]))
    torch.testing.assert_close(transform_matrix(u, -u), torch.eye(2))  # v = -u: no change


def _wrapped_layer(variant, weight, bias):
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
    linear.weight.data, linear.bias.data = weight.clone(), bias.clone()
    holder = torch.nn.Module()
    holder.layers = torch.nn.ModuleList([torch.nn.Module()])
    holder.layers[0].proj = linear
    holder.config = type("Config", (), {"num_hidden_layers": 1})()
    METHODS["ether"].prepare(holder, EtherParams(variant=variant, blocks=1), MethodContext())
    return holder.layers[0].proj


def test_the_layer_computes_w_h_x_plus_b_and_folds_to_w_h():
    weight, bias = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0.5, -0.5])
    layer = _wrapped_layer("ether", weight, bias)
    layer.ether_u.data = torch.tensor([[1.0, 0.0]])  # H = diag(-1, 1): the first input column flips sign
    x = torch.tensor([[1.0, 1.0]])
    torch.testing.assert_close(layer(x), torch.tensor([[-1.0 + 2.0 + 0.5, -3.0 + 4.0 - 0.5]]))
    folded = layer.folded()
    torch.testing.assert_close(folded.weight, torch.tensor([[-1.0, 2.0], [-3.0, 4.0]]))
    torch.testing.assert_close(folded.bias, bias)  # the bias is not transformed


def test_ether_plus_transforms_both_sides_and_folds_to_h_out_w_h_in():
    weight, bias = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0.0, 1.0])
    layer = _wrapped_layer("ether_plus", weight, bias)
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {
        "ether_u", "ether_v", "ether_u_out", "ether_v_out"}
    x = torch.tensor([[2.0, -1.0]])
    torch.testing.assert_close(layer(x), x @ weight.T + bias)  # starts as no change
    # H_in = diag(0, 2) (û = e₁, v̂ = e₂); H_out = I (v = -u).
    layer.ether_u.data, layer.ether_v.data = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    # H_out = diag(2, 0) (û = e₂, v̂ = e₁).
    layer.ether_u_out.data, layer.ether_v_out.data = torch.tensor([[0.0, 3.0]]), torch.tensor([[1.0, 0.0]])
    # H_out W H_in = diag(2, 0) [[1, 2], [3, 4]] diag(0, 2) = [[0, 8], [0, 0]].
    expected = torch.tensor([[0.0, 8.0], [0.0, 0.0]])
    torch.testing.assert_close(layer(x), x @ expected.T + bias)
    torch.testing.assert_close(layer.folded().weight, expected)
