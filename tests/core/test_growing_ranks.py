"""IncreLoRA and TriAdaptLoRA, the methods whose ranks grow while training:
rank goes where each paper's importance is highest and never beyond the
budget, the optimizer keeps training the grown tensors, a run resumed after
a growth step continues with the same shapes and losses as one never
interrupted, the job's log says when and where rank grew, and the saved
adapter loads in stock peft with each module's final rank."""

import json
from pathlib import Path

import pytest
import torch

from tuning.config import TrainConfig
from tuning.events import MemorySink
from tuning.methods import increlora, triadaptlora
from tuning.methods.growing import GrowthPlan, growing_layers, ranks_in_use
from tuning.train import run_train

NAMES = ("loud", "quiet", "silent")


def hand_built(method, params, layer_settings=None):
    """Three wrapped 8 × 8 linear layers in a plain container, with the plan
    the method's ``grow`` hook reads."""
    torch.manual_seed(0)
    layer_class = method._layer_class()
    model = torch.nn.ModuleDict({name: layer_class(torch.nn.Linear(8, 8), rank=params.initial_rank,
                                                   alpha=params.alpha, dropout=0.0, **(layer_settings or {}))
                                 for name in NAMES})
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".base." not in f".{name}")
    model.tuning_growth = GrowthPlan(params=params, total_steps=10, task="sft", budget=params.target_rank * 3)
    return model


def test_increlora_grows_the_modules_whose_gradient_dominates_and_stops_at_the_budget():
    params = increlora.IncreloraParams(initial_rank=1, target_rank=2, grow_by=1, grow_every=1, modules_per_round=2,
                                       warmup_fraction=0.0, final_fraction=0.0, orthogonality_weight=0.0,
                                       dropout=0.0)
    model = hand_built(increlora, params, {"reserve": 1})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, target = torch.randn(16, 8), torch.randn(16, 8)
    logs, budget = [], 6
    for step in range(1, 6):
        # The loud layer's loss weighs 100 times the quiet one's; the silent layer is in no loss at all.
        loss = 100 * (model["loud"](x) - target).pow(2).mean() + (model["quiet"](x) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        logs += increlora.grow(model, step, optimizer)
        optimizer.zero_grad(set_to_none=True)
        layers = growing_layers(model)
        assert ranks_in_use(layers) <= budget
        for parameter, state in optimizer.state.items():  # the moments grew with their tensors
            assert state["exp_avg"].shape == state["exp_avg_sq"].shape == parameter.shape
    assert {name: layer.rank for name, layer in growing_layers(model).items()} == {"loud": 3, "quiet": 2,
                                                                                  "silent": 1}
    assert logs[0].startswith("Step 1: rank grew in 2 modules: loud +1 → 2, quiet +1 → 2")
    assert logs[1].startswith("Step 2: rank grew in 1 module: loud +1 → 3 (6 of 6 ranks in use)")
    assert logs[2].startswith("Step 2: ranks fixed (budget spent)") and len(logs) == 3
    # Growth over, the reserve components leave the update: the plain LoRA pair computes the layer's change.
    loud = model["loud"]
    lora_b, lora_a = loud.lora_factors()
    assert not loud.growing and lora_a.shape == (3, 8)
    with torch.no_grad():
        torch.testing.assert_close(loud(x) - loud.base(x), x @ (lora_b @ lora_a).T)


def test_triadaptlora_grows_the_modules_whose_core_norm_rose_most_up_to_the_threshold():
    params = triadaptlora.TriadaptloraParams(initial_rank=1, target_rank=3, grow_by=2, grow_every=1,
                                             warmup_fraction=0.0, final_fraction=0.0)
    model = hand_built(triadaptlora, params)
    with torch.no_grad():  # as if training had moved the cores: the loud one's norm most, the silent one's not
        model["loud"].lora_C.fill_(3.0)
        model["quiet"].lora_C.fill_(2.0)
        model["loud"].lora_B.fill_(1.0)
    # Step 4 of 10: the linear curve lets ⌊(9 − 3) × 0.4⌋ = 2 modules grow; the threshold is the second score.
    # Growing needs no optimizer (None: nothing has trained yet).
    logs = triadaptlora.grow(model, 4, None)
    layers = growing_layers(model)
    assert logs == ["Step 4: rank grew in 2 modules: loud +2 → 3, quiet +2 → 3 (7 of 9 ranks in use)"]
    assert {name: layer.rank for name, layer in layers.items()} == {"loud": 3, "quiet": 3, "silent": 1}
    # The triangular strips: old entries kept, the new diagonal block the identity, the rest of the strips zero;
    # new columns of B start at zero, so growing changes the update only by the alpha / r rescaling.
    core, loud = layers["loud"].lora_C, layers["loud"]
    assert core.shape == (3, 3) and core[0, 0] == 3.0
    torch.testing.assert_close(core[1:, 1:], torch.eye(2))
    assert not core[0, 1:].any() and not core[1:, 0].any()
    assert (loud.lora_B[:, 0] == 1.0).all() and not loud.lora_B[:, 1:].any()
    # The last round (step 10): the budget's 2 remaining ranks, no more; then the ranks are fixed.
    logs = triadaptlora.grow(model, 10, None)
    assert ranks_in_use(layers) == 9 and logs[-1].startswith("Step 10: ranks fixed (budget spent): 9 of 9")
    assert triadaptlora.grow(model, 11, None) == []


def test_triadaptlora_threshold_follows_the_chosen_curve():
    model = hand_built(triadaptlora, triadaptlora.TriadaptloraParams(initial_rank=1, target_rank=2, grow_by=1,
                                                                     grow_every=1, warmup_fraction=0.0,
                                                                     final_fraction=0.0))
    with torch.no_grad():
        for scale, name in ((3.0, "loud"), (2.0, "quiet"), (1.5, "silent")):
            model[name].lora_C.fill_(scale)
    # Step 2 of 10: ⌊3 × 0.2⌋ = 0, at least 1 module: only the highest score clears the threshold.
    assert triadaptlora.grow(model, 2, None)[0] == "Step 2: rank grew in 1 module: loud +1 → 2 (4 of 6 ranks in use)"
    assert triadaptlora.modules_to_grow("linear", 10, 0.5) == 5
    assert triadaptlora.modules_to_grow("exponential", 100, 0.5) == 10
    assert triadaptlora.modules_to_grow("exponential", 100, 0.0) == 1


# --- in the training loop -------------------------------------------------------

# 8 steps: 1 of warm-up, growth every step from step 2 (the tiny model's 14 modules start at rank 1; the budget is
# 28), ranks fixed by step 6 at the latest. Dropout on: the resumed run must draw the same masks and the same new
# rows.
ROWS = {
    "increlora": {"initial_rank": 1, "target_rank": 2, "grow_by": 1, "grow_every": 1, "warmup_fraction": 0.125,
                  "final_fraction": 0.25, "dropout": 0.05},
    "triadaptlora": {"initial_rank": 1, "target_rank": 2, "grow_by": 1, "grow_every": 1, "warmup_fraction": 0.125,
                     "final_fraction": 0.25, "dropout": 0.05, "growth_curve": "exponential"},
}


def config(method, base, data, out, **overrides) -> TrainConfig:
    return TrainConfig.from_dict({"base_model": str(base), "dataset_path": str(data), "output_dir": str(out),
                                  "method": method, "method_params": ROWS[method], "max_steps": 8, "batch_size": 2,
                                  "learning_rate": 0.02, "warmup_ratio": 0.0, "precision": "fp32", **overrides})


def adapter_ranks(adapter_dir: Path) -> dict:
    return json.loads((adapter_dir / "adapter_config.json").read_text())["rank_pattern"]


@pytest.mark.parametrize("method", list(ROWS))
def test_a_run_resumed_after_growth_keeps_the_grown_shapes_and_reloads_in_stock_peft(method, tiny_model,
                                                                                      memorisable_jsonl, tmp_path):
    straight = MemorySink()
    done = run_train(config(method, tiny_model, memorisable_jsonl, tmp_path / "a"), straight)

    interrupted = MemorySink(stop_after=3)
    stopped = run_train(config(method, tiny_model, memorisable_jsonl, tmp_path / "b"), interrupted)
    grew = [e.message for e in interrupted.of_kind("log") if "rank grew" in e.message]
    assert stopped.status == "cancelled" and [m.split(":")[0] for m in grew] == ["Step 2", "Step 3"]
    resumed = MemorySink()
    result = run_train(config(method, tiny_model, memorisable_jsonl, tmp_path / "b", resume_from="latest"), resumed)

    assert result.status == "succeeded" and [e.step for e in resumed.of_kind("metrics")] == [4, 5, 6, 7, 8]
    metrics = interrupted.of_kind("metrics") + resumed.of_kind("metrics")
    assert [e.loss for e in metrics] == pytest.approx([e.loss for e in straight.of_kind("metrics")], rel=1e-5)
    assert [e.penalty for e in metrics] == pytest.approx([e.penalty for e in straight.of_kind("metrics")], rel=1e-5)
    logs = [e.message for e in interrupted.of_kind("log") + resumed.of_kind("log")]
    assert [m for m in logs if m.startswith("Step ")] == [e.message for e in straight.of_kind("log")
                                                          if e.message.startswith("Step ")]
    assert any("ranks fixed" in m for m in logs)

    final = adapter_ranks(Path(result.output_path))
    assert final == adapter_ranks(Path(done.output_path))
    assert len(final) == 14 and sum(final.values()) <= 28 and len(set(final.values())) > 1  # grown unevenly
    from safetensors.torch import load_file

    expected = load_file(Path(done.output_path) / "adapter_model.safetensors")
    got = load_file(Path(result.output_path) / "adapter_model.safetensors")
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-6)

    # Stock peft builds each module at its own final rank and computes what the trained model did.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), result.output_path).eval()
    for name, rank in final.items():
        assert stock.base_model.model.get_submodule(name).lora_A["default"].weight.shape[0] == rank
    inputs = {"input_ids": torch.tensor([[1, 2, 3, 4, 5]])}
    trained = result.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(**inputs).logits, trained(**inputs).logits, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("method", list(ROWS))
def test_a_grown_classifier_adapter_reloads_with_its_head(method, tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from tuning.methods import METHODS, MethodContext

    row = METHODS[method]
    params = row.params(**ROWS[method])

    def classifier():
        return AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2, dtype=torch.float32)

    torch.manual_seed(0)
    model = row.prepare(classifier(), params, MethodContext(task="classify", total_steps=8))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.02)
    inputs = {"input_ids": torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]), "attention_mask": torch.ones(2, 4, dtype=int)}
    model.train()
    for step in range(1, 4):
        model(**inputs, labels=torch.tensor([0, 1])).loss.backward()
        optimizer.step()
        row.grow(model, step, optimizer)
        optimizer.zero_grad(set_to_none=True)
    row.export(model, tmp_path)
    assert len(set(adapter_ranks(tmp_path).values())) > 1  # grown by then, unevenly
    torch.manual_seed(1)  # another random head on the base: the adapter's trained one must replace it
    stock = PeftModel.from_pretrained(classifier(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(**inputs).logits, model.eval()(**inputs).logits, rtol=1e-5, atol=1e-4)
