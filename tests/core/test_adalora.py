"""AdaLoRA in the training loop: a run resumed from a checkpoint prunes the
same ranks and follows the same losses as one never interrupted, and the
loss it reports (train and eval) is the task's cross-entropy, with the
orthogonality penalty reported on its own."""

import json
from pathlib import Path

import pytest
import torch

from tuning.config import TrainConfig
from tuning.data.splits import split_validation
from tuning.data.tasks import collate_for_task, load_task_data
from tuning.events import MemorySink
from tuning.loss import task_model
from tuning.methods import METHODS, MethodContext
from tuning.methods.adalora import penalty
from tuning.models import load_tokenizer
from tuning.train import run_train

# 8 steps: 1 at the initial rank, pruning at steps 2-5 (every step), the
# final ranks fixed at step 6 and kept for 7-8. Dropout on, so the resumed
# run must also draw the same dropout masks.
ADALORA = {"initial_rank": 6, "target_rank": 2, "reallocate_every": 1, "warmup_fraction": 0.125,
           "final_fraction": 0.25, "dropout": 0.05, "orthogonality_weight": 0.5}


def config(base, data, out, **overrides) -> TrainConfig:
    return TrainConfig.from_dict({"base_model": str(base), "dataset_path": str(data), "output_dir": str(out),
                                  "method": "adalora", "method_params": ADALORA, "max_steps": 8, "batch_size": 2,
                                  "learning_rate": 0.02, "warmup_ratio": 0.0, "precision": "fp32", **overrides})


def rank_pattern(adapter_dir: Path) -> dict:
    return json.loads((adapter_dir / "adapter_config.json").read_text())["rank_pattern"]


def test_a_resumed_run_prunes_the_same_ranks_and_follows_the_same_losses(tiny_model, memorisable_jsonl, tmp_path):
    straight = MemorySink()
    done = run_train(config(tiny_model, memorisable_jsonl, tmp_path / "a"), straight)

    interrupted = MemorySink(stop_after=3)
    stopped = run_train(config(tiny_model, memorisable_jsonl, tmp_path / "b"), interrupted)
    assert stopped.status == "cancelled"
    resumed = MemorySink()
    result = run_train(config(tiny_model, memorisable_jsonl, tmp_path / "b", resume_from="latest"), resumed)

    assert result.status == "succeeded" and [e.step for e in resumed.of_kind("metrics")] == [4, 5, 6, 7, 8]
    metrics = interrupted.of_kind("metrics") + resumed.of_kind("metrics")
    assert [e.loss for e in metrics] == pytest.approx([e.loss for e in straight.of_kind("metrics")], rel=1e-5)
    assert [e.penalty for e in metrics] == pytest.approx([e.penalty for e in straight.of_kind("metrics")], rel=1e-5)

    # Ranks were pruned after the resume, from the importance scores carried over: the same ones.
    at_checkpoint = rank_pattern(Path(stopped.output_path))
    final = rank_pattern(Path(result.output_path))
    assert final == rank_pattern(Path(done.output_path))
    assert final != at_checkpoint
    assert sum(map(sum, final.values())) == ADALORA["target_rank"] * len(final)  # the budget, shared unevenly
    assert len({sum(kept) for kept in final.values()}) > 1

    from safetensors.torch import load_file

    expected = load_file(Path(done.output_path) / "adapter_model.safetensors")
    got = load_file(Path(result.output_path) / "adapter_model.safetensors")
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-6)


def test_a_checkpoint_without_the_allocator_state_is_refused(tiny_model, memorisable_jsonl, tmp_path):
    """A checkpoint written before AdaLoRA's state was saved cannot continue exactly: refused, not resumed wrong."""
    from tuning.errors import ConfigError

    run_train(config(tiny_model, memorisable_jsonl, tmp_path), MemorySink(stop_after=3))
    (tmp_path / "checkpoints" / "step-0000003" / "method_state.safetensors").unlink()
    with pytest.raises(ConfigError, match="method_state.safetensors"):
        run_train(config(tiny_model, memorisable_jsonl, tmp_path, resume_from="latest"), MemorySink())


def test_the_penalty_is_what_peft_adds_to_the_loss(tiny_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    method = METHODS["adalora"]
    model = method.prepare(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                           method.params(**ADALORA), MethodContext(total_steps=8)).eval()
    ids = torch.tensor([[5, 400, 2000, 77, 9, 31]])
    with torch.no_grad():
        with_penalty = model(input_ids=ids, labels=ids).loss
        plain = task_model(model)(input_ids=ids, labels=ids).loss
        term = penalty(model)
    assert float(term) > 1e-3  # random A and B are far from orthogonal
    torch.testing.assert_close(with_penalty, plain + term, rtol=1e-6, atol=1e-6)


def test_reported_losses_are_the_plain_cross_entropy(tiny_model, memorisable_jsonl, tmp_path):
    sink, adalora = MemorySink(), config(tiny_model, memorisable_jsonl, tmp_path / "adalora", validation_ratio=0.5,
                                         eval_every=4)
    result = run_train(adalora, sink)
    metrics = sink.of_kind("metrics")
    assert all(e.penalty is not None and e.penalty > 0 for e in metrics)

    # Before the first update AdaLoRA's adapter adds nothing (E = 0), as
    # LoRA's does not (B = 0): both report the base model's loss on the same rows.
    lora = MemorySink()
    run_train(config(tiny_model, memorisable_jsonl, tmp_path / "lora", validation_ratio=0.5, max_steps=1,
                     method="lora", method_params={"rank": 4, "dropout": 0.0}), lora)
    assert lora.of_kind("metrics")[0].penalty is None
    assert metrics[0].loss == pytest.approx(lora.of_kind("metrics")[0].loss, rel=1e-5)

    # The last eval loss is the mean cross-entropy over the validation rows' label tokens.
    tokenizer = load_tokenizer(str(tiny_model))
    items = load_task_data("sft", memorisable_jsonl, tokenizer=tokenizer, max_length=adalora.max_length).items
    _, validation = split_validation(items, adalora.validation_ratio, adalora.seed)
    collate = collate_for_task("sft", pad_token_id=tokenizer.pad_token_id)
    model = result.model.eval()
    loss_sum, count = 0.0, 0
    with torch.no_grad():
        for item in validation:
            batch = collate([item])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][0, 1:]
            labelled = targets != -100
            loss_sum += float(torch.nn.functional.cross_entropy(logits[0, :-1][labelled], targets[labelled],
                                                                reduction="sum"))
            count += int(labelled.sum())
        with_penalty = float(model(**collate(validation)).loss)  # what peft's forward reports
    last_eval = sink.of_kind("eval")[-1]
    assert last_eval.step == 8 and len(validation) == 2
    assert last_eval.eval_loss == pytest.approx(loss_sum / count, rel=1e-5)
    assert with_penalty - last_eval.eval_loss > 1e-3  # the old report, penalty included, was visibly off
