"""Packed (padding-free) batches: layout, coverage, and that a packed row
computes exactly what its examples compute one by one."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuning.data.packing import collate_packed, pack_rows, packing_works, plan_rows
from tuning.data.sft import IGNORE_INDEX, TokenizedExample, batches


def examples(lengths, seed=0):
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(3, 900) for _ in range(n)]
        prompt = n // 3  # no loss on the first third, like a prompt
        out.append(TokenizedExample(input_ids=ids, labels=[IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


@pytest.fixture(scope="module")
def llama(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()


def test_rows_never_exceed_the_capacity_and_hold_every_item_once():
    rng = random.Random(1)
    for _ in range(200):
        capacity = rng.randrange(8, 64)
        lengths = [rng.randrange(1, capacity + 1) for _ in range(rng.randrange(1, 20))]
        rows = pack_rows(lengths, capacity)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= capacity for row in rows)
    assert pack_rows([5, 30, 9, 17], 40) == [[1, 2], [3, 0]]  # first fit, longest first


def test_one_row_unless_attention_over_it_would_cost_more_than_padded_rows():
    # One long and three short: one row of 632 beats two rows padded to 512.
    assert plan_rows([512, 40, 40, 40], max_length=512, context_tokens=3900) == [[0, 1, 2, 3]]
    # Four long where attention is dear (a small model): rows of at most max_length.
    rows = plan_rows([400, 400, 400, 400], max_length=512, context_tokens=500)
    assert sorted(map(sorted, rows)) == [[0], [1], [2], [3]]
    # Either way no row is wider than the micro-batch's budget of batch_size × max_length.
    rng = random.Random(2)
    for _ in range(100):
        lengths = [rng.randrange(1, 65) for _ in range(rng.randrange(1, 9))]
        rows = plan_rows(lengths, max_length=64, context_tokens=rng.choice([10, 100, 4096]))
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 64 for row in rows) or len(rows) == 1
        assert max(sum(lengths[i] for i in row) for row in rows) <= 64 * len(lengths)


def test_one_packed_row_has_no_padding():
    batch = examples([5, 17, 9, 30])
    out = collate_packed(batch, max_length=40, pad_token_id=0)  # attention is cheap at 61 tokens
    assert out["input_ids"].shape == (1, 61)
    assert out["position_ids"][0].tolist() == [*range(5), *range(17), *range(9), *range(30)]
    assert out["input_ids"][0].tolist() == [t for e in batch for t in e.input_ids]


def test_a_row_padded_to_a_multiple_gives_the_same_loss(llama):
    batch = examples([5, 17, 9, 30])
    plain = collate_packed(batch, max_length=40, pad_token_id=0)
    padded = collate_packed(batch, max_length=40, pad_token_id=0, pad_to_multiple_of=8)
    assert padded["input_ids"].shape == (1, 64)
    assert padded["position_ids"][0, 61:].tolist() == [0, 1, 2]  # a block of its own
    assert padded["labels"][0, 61:].tolist() == [IGNORE_INDEX] * 3
    with torch.no_grad():
        torch.testing.assert_close(llama(**padded, use_cache=False).loss, llama(**plain, use_cache=False).loss)


@pytest.mark.parametrize("context_tokens", [1.0, 4096.0])
def test_collated_rows_restart_positions_and_never_learn_across_examples(context_tokens):
    batch = examples([5, 17, 9, 30])
    out = collate_packed(batch, max_length=40, pad_token_id=0, context_tokens=context_tokens)
    ids, positions, labels = out["input_ids"], out["position_ids"], out["labels"]
    assert set(out) == {"input_ids", "position_ids", "labels"}  # no attention mask: the positions carry it
    assert ids.shape == positions.shape == labels.shape
    assert ids.shape[1] <= 40 if context_tokens == 1.0 else ids.shape == (1, 61)
    # Every example appears once, whole, with positions 0..n-1 and its first label masked.
    for example in batch:
        n, found = len(example.input_ids), 0
        for row in range(ids.shape[0]):
            for start in range(ids.shape[1] - n + 1):
                if ids[row, start:start + n].tolist() == example.input_ids and positions[row, start] == 0:
                    found += 1
                    assert positions[row, start:start + n].tolist() == list(range(n))
                    assert labels[row, start].item() == IGNORE_INDEX
                    assert labels[row, start + 1:start + n].tolist() == example.labels[1:]
        assert found == 1
    real = sum(len(e.input_ids) for e in batch)
    assert int((labels != IGNORE_INDEX).sum()) == sum(sum(x != IGNORE_INDEX for x in e.labels[1:]) for e in batch)
    assert ids.numel() - real < 30  # padding only to the longest row: 2 rows of 39, or none


@pytest.mark.parametrize("group_by_length", [False, True])
def test_every_example_appears_exactly_once_per_epoch_in_a_fixed_order(group_by_length):
    items = examples([random.Random(i).randrange(2, 60) for i in range(103)])
    for epoch in range(2):
        got = list(batches(items, batch_size=4, seed=7, epoch=epoch, group_by_length=group_by_length))
        assert sorted(id(e) for b in got for e in b) == sorted(id(e) for e in items)
        again = list(batches(items, batch_size=4, seed=7, epoch=epoch, group_by_length=group_by_length))
        assert [[id(e) for e in b] for b in got] == [[id(e) for e in b] for b in again]
    plain = list(batches(items, batch_size=4, seed=7, epoch=0))
    grouped = list(batches(items, batch_size=4, seed=7, epoch=0, group_by_length=True))

    def padding(bs):
        return sum(len(b) * max(len(e.input_ids) for e in b) - sum(len(e.input_ids) for e in b) for b in bs)

    assert padding(grouped) < padding(plain) / 3


def test_packed_loss_equals_the_token_weighted_loss_of_each_example_alone(llama):
    batch = examples([5, 17, 9, 30, 12, 3])
    packed = collate_packed(batch, max_length=40, pad_token_id=0, context_tokens=1.0)
    assert 1 < packed["input_ids"].shape[0] < len(batch)  # really packed, with a padded row
    with torch.no_grad():
        packed_loss = llama(**packed, use_cache=False).loss
        total, weight = 0.0, 0
        for example in batch:
            alone = llama(input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels]))
            n = sum(label != IGNORE_INDEX for label in example.labels[1:])
            total, weight = total + alone.loss.item() * n, weight + n
    torch.testing.assert_close(packed_loss.item(), total / weight, rtol=1e-5, atol=1e-6)
    # With a cache object transformers ignores the packed layout: the examples
    # see each other and the loss changes (why the trainer passes use_cache=False).
    with torch.no_grad():
        leaky = llama(**packed, use_cache=True).loss.item()
    assert abs(leaky - total / weight) > 1e-4


def test_the_probe_accepts_a_llama_and_refuses_a_model_that_ignores_positions(llama):
    assert packing_works(llama, "cpu")

    class DropsPositions(torch.nn.Module):  # like a model whose attention knows nothing of packing
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

        def forward(self, input_ids, position_ids=None, **kwargs):
            return self.inner(input_ids=input_ids, **kwargs)

    assert not packing_works(DropsPositions(llama), "cpu")
    # as a run in bf16 asks it (CPUs with native bf16 pick it): the rounding is allowed for, the leak is not
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert packing_works(llama, "cpu")
        assert not packing_works(DropsPositions(llama), "cpu")


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_lora_run_packs_in_every_precision(tiny_model, memorisable_jsonl, tmp_path, precision):
    # bf16 stores the frozen base in bf16; the packing probe must run as
    # training does (under autocast) or it wrongly falls back to padding.
    from tuning.config import TrainConfig
    from tuning.events import MemorySink
    from tuning.train import run_train

    sink = MemorySink()
    run_train(TrainConfig.from_dict({"base_model": str(tiny_model), "dataset_path": str(memorisable_jsonl),
                                     "output_dir": str(tmp_path), "max_steps": 1, "precision": precision}), sink)
    logs = [event.message for event in sink.of_kind("log")]
    assert any(message.startswith("Packing rows end to end") for message in logs), logs

