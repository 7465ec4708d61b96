"""MoS (Mixture of Shards) against its paper's construction on small tensors:
each layer's A and B are shards from a global pool concatenated by its index
matrix (vector sharding, subset selection, pair dissociation, private
shards), the pools hold what LoRA at the pool rank holds, and the export is a
plain LoRA adapter equal to the trained layers, which folds exactly."""

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tuning.loading import artifact_layout, load_artifact
from tuning.methods import METHODS, MethodContext
from tuning.methods.common import count_parameters
from tuning.methods.mos import MosParams, assemble, index_matrices


def _prepared(tiny_model, **settings):
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    return METHODS["mos"].prepare(model, MosParams(**settings), MethodContext())


def _perturbed(model):
    with torch.no_grad():  # B starts at zero: give every pool values so the update is not zero
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_a_matrix_row_is_its_indexed_shards_concatenated():
    pool = torch.arange(12.0).reshape(6, 2)  # six shards of length 2
    index = torch.tensor([[0, 5], [3, 1]])  # rank 2, l = 2 shards per vector
    torch.testing.assert_close(assemble(pool, index), torch.tensor([[0.0, 1.0, 10.0, 11.0], [6.0, 7.0, 2.0, 3.0]]))


def test_each_layer_takes_its_private_shards_and_a_subset_of_the_public_ones():
    # 3 layers, rank 2, l = 2: 4 slots a layer; a pool of 3 · pool rank 2 · l 2 = 12 shards, of which each layer
    # owns 1 (ids 9, 10, 11) and 9 are public (ids 0-8).
    draw = dict(rank=2, shards=2, private=1, pool_rank=2)
    matrices = index_matrices(3, generator=torch.Generator().manual_seed(0), **draw)
    for layer, index in enumerate(matrices):
        ids = index.flatten().tolist()
        assert index.shape == (2, 2) and len(set(ids)) == 4  # no shard twice in one matrix
        assert [i for i in ids if i >= 9] == [9 + layer]  # its own private shard, no other layer's
    again = index_matrices(3, generator=torch.Generator().manual_seed(0), **draw)
    other = index_matrices(3, generator=torch.Generator().manual_seed(1), **draw)
    assert all(torch.equal(a, b) for a, b in zip(matrices, again))
    assert not all(torch.equal(a, b) for a, b in zip(matrices, other))


def test_a_layer_computes_lora_with_its_assembled_pair_and_folds_exactly(tiny_model):
    model = _perturbed(_prepared(tiny_model, rank=4, pool_rank=4, shards_per_vector=2, private_shards=1))
    layer = model.model.layers[1].self_attn.k_proj  # 32 → 16
    pool_a, pool_b = (model.mos_pools[key].detach() for key in layer.mos_keys)
    a = torch.stack([torch.cat([pool_a[i] for i in row]) for row in layer.mos_index_a.tolist()])  # r × in
    b = torch.stack([torch.cat([pool_b[i] for i in row]) for row in layer.mos_index_b.tolist()]).T  # out × r
    assert a.shape == (4, 32) and b.shape == (16, 4)
    x = torch.randn(3, 32)
    scaling = 16.0 / 4  # alpha / rank
    expected = x @ layer.base.weight.T + scaling * (x @ a.T) @ b.T
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected)
        torch.testing.assert_close(layer.folded()(x), expected)


def test_pairs_dissociate_unless_asked_not_to(tiny_model):
    def indices(dissociate):
        layer = _prepared(tiny_model, rank=4, pool_rank=4, dissociate_pairs=dissociate).model.layers[0].mlp.up_proj
        return layer.mos_index_a, layer.mos_index_b

    a, b = indices(True)
    assert not torch.equal(a, b)
    a, b = indices(False)
    assert torch.equal(a, b)


def test_the_pools_hold_what_lora_at_the_pool_rank_holds_while_each_layer_gets_the_full_rank(tiny_model):
    # Per block, Σ (in + out) over q 32→32, k 32→16, v 32→16, o 32→32, gate 32→64, up 32→64, down 64→32 is 512;
    # LoRA at rank 4 on 2 blocks trains 2 · 4 · 512 = 4096, and so do MoS's pools at pool rank 4, while each layer
    # is rank 8 (LoRA at rank 8: 8192).
    model = _prepared(tiny_model, rank=8, pool_rank=4, shards_per_vector=2, private_shards=0)
    assert count_parameters(model)[0] == 2 * 4 * 512
    lora = METHODS["lora"].prepare(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                   METHODS["lora"].params(rank=4, dropout=0.0), MethodContext())
    assert count_parameters(lora)[0] == count_parameters(model)[0]
    assert torch.linalg.matrix_rank(model.model.layers[0].self_attn.q_proj.lora_a()) == 8


def test_the_export_is_a_plain_lora_adapter_that_loads_and_folds(tiny_model, tmp_path):
    model = _perturbed(_prepared(tiny_model, rank=4, pool_rank=4))
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        trained = model.eval()(input_ids=ids).logits
    METHODS["mos"].export(model, tmp_path)
    assert artifact_layout(tmp_path) == "adapter"
    loaded, _ = load_artifact(tmp_path, base_model=str(tiny_model))
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    folded = PeftModel.from_pretrained(base, tmp_path).merge_and_unload().eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained)
        torch.testing.assert_close(folded(input_ids=ids).logits, trained, rtol=1e-5, atol=1e-5)
