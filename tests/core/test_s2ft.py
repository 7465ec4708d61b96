"""S²FT (arXiv:2412.06289) against its definition: whole heads of the
attention output projection and single channels of the FFN down projection
train, and training them through the added update is the same as updating
those columns of the weights in place."""

import torch
from transformers import AutoModelForCausalLM

from tuning.methods import METHODS, MethodContext
from tuning.methods.s2ft import S2ftParams, _sparse_columns_class


def test_the_update_is_added_to_the_chosen_columns():
    linear = torch.nn.Linear(3, 1, bias=False)
    linear.weight.data = torch.tensor([[1.0, 2.0, 3.0]])
    layer = _sparse_columns_class()(linear, [0, 2])
    layer.s2ft_delta.data = torch.tensor([[10.0, 20.0]])
    x = torch.tensor([[1.0, 1.0, 1.0]])
    torch.testing.assert_close(layer(x), torch.tensor([[1.0 + 2.0 + 3.0 + 10.0 + 20.0]]))
    torch.testing.assert_close(layer.folded().weight, torch.tensor([[11.0, 2.0, 23.0]]))


def _prepared(tiny_model, **settings):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    return METHODS["s2ft"].prepare(model, S2ftParams(**settings), MethodContext())


def test_whole_heads_and_single_channels_are_chosen_by_the_seed(tiny_model):
    model = _prepared(tiny_model, heads=1, channels=8, seed=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"model.layers.{i}.{proj}.s2ft_delta" for i in (0, 1)
                         for proj in ("self_attn.o_proj", "mlp.down_proj")}
    for i in (0, 1):
        head = model.model.layers[i].self_attn.o_proj.columns.tolist()
        assert len(head) == 8 and head[0] % 8 == 0 and head == list(range(head[0], head[0] + 8))  # 4 heads of 8
        channels = model.model.layers[i].mlp.down_proj.columns.tolist()
        assert len(set(channels)) == 8 and all(0 <= c < 64 for c in channels)
    other = _prepared(tiny_model, heads=1, channels=8, seed=1)
    assert [model.model.layers[i].mlp.down_proj.columns.tolist() for i in (0, 1)] != \
        [other.model.layers[i].mlp.down_proj.columns.tolist() for i in (0, 1)]


def test_a_step_equals_updating_those_columns_of_the_full_weights_in_place(tiny_model):
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(0, 200, (2, 12))}
    batch["labels"] = batch["input_ids"]
    sparse = _prepared(tiny_model, heads=1, channels=8)
    full = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    lr = 0.5

    sparse(**batch).loss.backward()
    torch.optim.SGD([p for p in sparse.parameters() if p.requires_grad], lr=lr).step()
    full(**batch).loss.backward()
    with torch.no_grad():
        for name, parameter in full.named_parameters():
            module = sparse.get_submodule(name.removesuffix(".weight"))
            if hasattr(module, "columns"):  # the chosen columns step; every other entry stays
                parameter[:, module.columns] -= lr * parameter.grad[:, module.columns]
        for module in [m for m in sparse.modules() if hasattr(m, "folded")]:
            module.folded()
    expected, got = full.state_dict(), sparse.state_dict()
    base, changed = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict(), 0
    for name, tensor in expected.items():
        key = name if name in got else name.replace(".weight", ".base.weight")
        torch.testing.assert_close(got[key], tensor, rtol=0, atol=1e-6)
        changed += not torch.equal(tensor, base[name])
    assert changed == 4  # o_proj and down_proj of the two blocks
