"""Ladder Side-Tuning: the backbone keeps nothing for backward (its hidden
states carry no graph, its weights get no gradient even when asked to),
less is saved for backward than with LoRA, and the memory estimate says so;
generation with the cache matches generation without it and padding changes
nothing; the saved side network reloads through the studio's loader and
answers through the playground's generation."""

from types import SimpleNamespace

import torch

from tests.core.test_methods import batch, load, prepared  # noqa: F401  (fixture)
from tuning.generate import generate_stream
from tuning.loading import artifact_layout, load_artifact
from tuning.methods import METHODS, ladder
from tuning.methods.blocks import transformer_blocks
from tuning.methods.memory import estimate_training_memory

SIDE = {"reduction_factor": 4}


def backbone_outputs(model) -> list:
    """Every transformer block's output of the next forward, as computed."""
    seen = []
    for block in transformer_blocks(model)[1]:
        block.register_forward_hook(lambda module, args, output: seen.append(
            output[0] if isinstance(output, tuple) else output))
    return seen


def test_the_backbone_keeps_no_activation_for_backward_and_gets_no_gradient(tiny_model, batch):  # noqa: F811
    _, _, model = prepared("ladder", SIDE, tiny_model, batch)
    seen = backbone_outputs(model)
    backbone_weight = transformer_blocks(model)[1][0].mlp.down_proj.weight
    backbone_weight.requires_grad_(True)  # asked for, yet no gradient may reach it: the backbone ran without grad
    model.train()
    model(**batch).loss.backward()
    assert seen and all(state.grad_fn is None and not state.requires_grad for state in seen)
    assert backbone_weight.grad is None
    assert model.ladder_side.upsample.weight.grad.abs().sum() > 0  # the side network learns, through the head

    # The same probe sees a graph on every block's output under LoRA: the check can fail.
    _, _, lora = prepared("lora", {"rank": 4}, tiny_model, batch)
    seen = backbone_outputs(lora)
    lora(**batch).loss.backward()
    assert seen and all(state.grad_fn is not None for state in seen)


def saved_for_backward_bytes(model, batch) -> int:
    """The activations autograd keeps between the forward and the backward
    of one step (the weights it also holds on to are there anyway)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = 0

    def pack(tensor):
        nonlocal total
        if tensor.untyped_storage().data_ptr() not in weights:
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    return total


def test_less_is_saved_for_backward_than_with_lora_and_the_estimate_shows_it(tiny_model, batch):  # noqa: F811
    _, _, side = prepared("ladder", SIDE, tiny_model, batch)
    _, _, lora = prepared("lora", {"rank": 4}, tiny_model, batch)
    assert saved_for_backward_bytes(side, batch) < saved_for_backward_bytes(lora, batch)

    # The form's estimate on the bundled model's shape (SmolLM2-135M), batch 4 of 256 tokens.
    smollm = SimpleNamespace(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, vocab_size=49152)
    params = ladder.LadderParams()
    shape = METHODS["ladder"].side_network_shape(params, smollm)
    assert shape == (72, 1)  # 576 / 8 wide, one head of the backbone's head size (64) or less
    run = {"trainable": 5_000_000, "total": 140_000_000, "batch_size": 4, "max_length": 256}
    with_side = estimate_training_memory(smollm, side_network=shape, **run)
    with_lora = estimate_training_memory(smollm, **run)
    assert with_side.activations < with_lora.activations / 2  # the logits (302 MB) are the same in both
    assert with_side.weights == with_lora.weights and with_side.optimizer == with_lora.optimizer


def test_generation_with_the_cache_matches_without_and_padding_changes_nothing(tiny_model, batch):  # noqa: F811
    _, _, model = prepared("ladder", SIDE, tiny_model, batch)
    with torch.no_grad():
        for parameter in model.ladder_side.parameters():  # as if trained: the side network's output is not zero
            parameter.add_(torch.randn_like(parameter) * 0.1)
    model.eval()
    ids = batch["input_ids"][:1, :int(batch["attention_mask"][0].sum())]
    greedy = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        cached = model.generate(input_ids=ids, use_cache=True, **greedy)
        uncached = model.generate(input_ids=ids, use_cache=False, **greedy)
        assert torch.equal(cached, uncached)
        alone = model(input_ids=ids).logits
        mask = torch.cat([torch.zeros_like(ids[:, :3]), torch.ones_like(ids)], 1)  # three padding tokens on the left
        padded = model(input_ids=torch.cat([torch.zeros_like(ids[:, :3]), ids], 1), attention_mask=mask,
                       position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(padded[:, 3:], alone, rtol=1e-4, atol=1e-4)


def test_the_saved_side_network_reloads_through_the_loader_and_answers(tiny_model, batch, tmp_path):  # noqa: F811
    method, params, model = prepared("ladder", SIDE, tiny_model, batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    method.export(model.eval(), tmp_path)
    assert artifact_layout(tmp_path) == "ladder"

    loaded, tokenizer = load_artifact(tmp_path, base_model=str(tiny_model))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=1e-5, atol=1e-5)
        base = load(tiny_model)(**inputs).logits
    assert not torch.allclose(base, loaded(**inputs).logits, atol=1e-4)  # the side network is in use
    # The playground's streaming generation, on the reloaded model and on the one that trained.
    answers = []
    for generator in (loaded, model):
        stream = generate_stream(generator, tokenizer, "Say the colour of the sky.", max_new_tokens=4)
        list(stream)
        answers.append(stream.new_token_ids)
    assert answers[0] and answers[0] == answers[1]
