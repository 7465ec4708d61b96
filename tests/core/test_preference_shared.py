"""Shared-prefix blocks (tuning.data.preference_packing): each pair's prompt
computed once, no padding, the head only where a label is. The losses and
LoRA gradients they give must be TRL's DPOTrainer/CPOTrainer's on the same
pairs (the padded layout is checked against TRL in test_preference_parity.py,
with the same helpers), and the layout must keep the two replies apart."""

from __future__ import annotations

import json

import pytest
import torch

from tests.core.test_preference_parity import CASES, PAIRS, _assert_same, _loss_and_grads, lora_and_batch  # noqa: F401
from tuning.data.preference import PreferenceExample, PreferencePair, tokenize_pair
from tuning.data.preference_packing import collate_pairs_shared, shared_prefix_length
from tuning.data.sft import IGNORE_INDEX, TokenizedExample
from tuning.preference import PreferenceObjective, PreferenceSettings
from tuning.preference_scoring import sequence_logps, shared_layout_works

# Replies that share their opening tokens, and one long enough to pad the others in TRL's layout.
MORE = [PreferencePair(prompt="Count to three.", chosen="One, two, three.", rejected="One, two.", row=4),
        PreferencePair(prompt="Tell a very short story about a cat who finds a hat.",
                       chosen="A cat found a hat in the garden, wore it to dinner and was admired by all the birds.",
                       rejected="No.", row=5)]


def _shared(tokenizer, pairs):
    return collate_pairs_shared([tokenize_pair(p, tokenizer, max_length=64) for p in pairs],
                                pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=8)


@pytest.mark.parametrize("loss", ["dpo", "ipo", "simpo", "cpo"])
def test_shared_prefix_blocks_give_trls_loss_and_lora_gradients(loss, lora_and_batch, tmp_path):
    model, tokenizer, batch, base = lora_and_batch
    settings, trl_loss = CASES[loss]
    shared = _shared(tokenizer, PAIRS)
    assert shared["input_ids"].numel() < batch["input_ids"].numel()  # the prompts once, no padding
    ours = _loss_and_grads(model, lambda: PreferenceObjective(model, settings)(shared))
    compute = trl_loss(model, tokenizer, batch, base, tmp_path)
    _assert_same(ours, _loss_and_grads(compute.trainer.model, compute))


def test_each_reply_sees_the_prompt_and_itself_only(lora_and_batch):
    """Per sequence, the same log-probabilities as scoring it alone, for replies that share opening tokens and
    pairs of very different lengths packed into one row (a reply that saw the other would score differently)."""
    model, tokenizer, _, _ = lora_and_batch
    examples = [tokenize_pair(p, tokenizer, max_length=64) for p in PAIRS + MORE]
    shared = collate_pairs_shared(examples, pad_token_id=tokenizer.pad_token_id)
    assert shared["input_ids"].shape[0] == 1  # everything in one row, block-diagonal
    assert shared_prefix_length(examples[3].chosen.input_ids, examples[3].rejected.input_ids) > \
        next(i for i, label in enumerate(examples[3].chosen.labels) if label != IGNORE_INDEX)
    with torch.no_grad():
        summed, counts = sequence_logps(model, shared)
        sides = [e.chosen for e in examples] + [e.rejected for e in examples]
        for i, side in enumerate(sides):
            alone = {"input_ids": torch.tensor([side.input_ids]), "attention_mask": torch.ones(1, len(side.input_ids)),
                     "labels": torch.tensor([side.labels])}
            expected, count = sequence_logps(model, alone)
            assert int(counts[i]) == int(count[0])
            torch.testing.assert_close(summed[i], expected[0], rtol=1e-5, atol=1e-5)


def test_the_layout_is_checked_on_the_model(lora_and_batch):
    model, *_ = lora_and_batch
    assert shared_layout_works(model, "cpu")

    class IgnoresTheMask(torch.nn.Module):  # an attention that does not read the 4D mask lets replies see each other
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def get_input_embeddings(self):
            return self.lm.get_input_embeddings()

        def get_output_embeddings(self):
            return self.lm.get_output_embeddings()

        @property
        def base_model(self):
            decoder = self.lm.base_model
            return lambda **kw: decoder(**{**kw, "attention_mask": None})

        def forward(self, **kw):
            return self.lm(**kw)

    assert not shared_layout_works(IgnoresTheMask(model.get_base_model()), "cpu")


def test_precomputed_reference_log_probabilities_travel_with_the_blocks():
    side = TokenizedExample([1, 2, 3], [IGNORE_INDEX, 2, 3])
    other = TokenizedExample([1, 2, 4, 5], [IGNORE_INDEX, 2, 4, 5])
    out = collate_pairs_shared([PreferenceExample(side, other, ref_logps=(-1.0, -2.0)),
                                PreferenceExample(other, side, ref_logps=(-3.0, -4.0))], pad_token_id=0)
    assert out["ref_logps"].tolist() == [-1.0, -3.0, -2.0, -4.0]
    # pair 1: [1 2 | 3 | 4 5]: the rejected reply's 4 is predicted from the shared 2, its 5 from its own 4
    assert out["score_sequence"].tolist()[:5] == [0, 0, 2, 2, 2]
    assert out["input_ids"][0, :5].tolist() == [1, 2, 3, 4, 5]
    assert out["position_ids"][0, :5].tolist() == [0, 1, 2, 2, 3]
    assert not out["attention_mask"][0, 0, 3, 2] and out["attention_mask"][0, 0, 3, 1]


def test_objective_counts_pairs_in_either_layout(lora_and_batch):
    model, tokenizer, batch, _ = lora_and_batch
    objective = PreferenceObjective(model, PreferenceSettings(loss="dpo"))
    assert objective.rows(batch) == objective.rows(_shared(tokenizer, PAIRS)) == len(PAIRS)


def test_the_loop_trains_on_shared_blocks_with_the_padded_rows_numbers(tiny_model, tmp_path):
    """Same steps, losses and rewards whichever the layout (packing on by default, off for padded rows);
    ORPO, whose supervised term covers the prompt, stays on padded rows and says so."""
    from tests.core.test_preference_training import config
    from tuning.events import MemorySink
    from tuning.train import run_train

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}) + "\n"
                            for p in PAIRS + MORE))
    runs = {}
    for packing in (True, False):
        sink = MemorySink()
        run_train(config(tiny_model, data, tmp_path / str(packing), max_steps=3, batch_size=3, packing=packing), sink)
        logs = " ".join(e.message for e in sink.of_kind("log"))
        assert ("prompt computed once" in logs) is packing
        runs[packing] = [(m.loss, m.reward_margin, m.rewards_chosen) for m in sink.of_kind("metrics")]
    assert len(runs[True]) == 3 and runs[True][-1][1] != 0.0
    torch.testing.assert_close(torch.tensor(runs[True]), torch.tensor(runs[False]), rtol=1e-4, atol=1e-5)
    sink = MemorySink()
    run_train(config(tiny_model, data, tmp_path / "orpo", max_steps=1, preference_loss="orpo"), sink)
    assert any("scored as padded rows: ORPO also trains on the chosen row's prompt" in e.message
               for e in sink.of_kind("log"))
