"""Reward models: Bradley–Terry training of a sequence-classification head
on preference pairs. The loss and LoRA gradients equal TRL's
RewardTrainer's on the same batch; a short run ranks every pair right
(pairwise accuracy on the validation split, and in an Evaluate run); the
adapter loads with stock transformers + peft and scores like the trained
model; the settings that do not fit are refused naming the field."""

import json
from pathlib import Path

import pytest
import torch

from tuning.config import TrainConfig
from tuning.data.preference import PreferencePair, collate_pairs, tokenize_pair
from tuning.errors import ConfigError, DatasetError
from tuning.events import MemorySink
from tuning.loading import load_artifact
from tuning.reward import RewardObjective, score_texts
from tuning.train import run_train

PAIRS = [{"prompt": f"What is {a} plus {b}?", "chosen": f"{a + b}.", "rejected": f"I cannot add {a} and {b}."}
         for a in range(4) for b in range(3)]


@pytest.fixture
def pairs_jsonl(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    return path


def config(tiny_model, data, out, **overrides) -> TrainConfig:
    return TrainConfig.from_dict({
        "base_model": str(tiny_model), "dataset_path": str(data), "output_dir": str(out), "task": "reward",
        "max_steps": 6, "batch_size": 4, "learning_rate": 0.01, "warmup_ratio": 0.0, "precision": "fp32",
        "method_params": {"rank": 8, "alpha": 16, "dropout": 0.0}, **overrides})


def test_loss_and_lora_gradients_match_trl_reward_trainer(tiny_model, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    pairs = [PreferencePair(**row, row=i) for i, row in enumerate(PAIRS[:3], start=1)]
    batch = collate_pairs([tokenize_pair(p, tokenizer, max_length=64) for p in pairs],
                          pad_token_id=tokenizer.pad_token_id)

    def base():
        return AutoModelForSequenceClassification.from_pretrained(
            tiny_model, num_labels=1, pad_token_id=tokenizer.pad_token_id, dtype=torch.float32)

    def lora():
        return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS")

    torch.manual_seed(0)
    model = get_peft_model(base(), lora())
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(std=0.2)
    trainer = RewardTrainer(model=base(), args=RewardConfig(
        output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, bf16=False, max_length=64,
        per_device_train_batch_size=3, center_rewards_coefficient=0.01),
        train_dataset=Dataset.from_list(PAIRS[:3]), processing_class=tokenizer, peft_config=lora())
    theirs_params = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.requires_grad:
                theirs_params[name].copy_(weight)

    def loss_and_grads(owner, compute):
        owner.zero_grad(set_to_none=True)
        loss = compute()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in owner.named_parameters() if p.requires_grad}

    ours = loss_and_grads(model, lambda: RewardObjective(model, centering=0.01)(batch))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    theirs = loss_and_grads(trainer.model, lambda: trainer.compute_loss(trainer.model, dict(inputs)))
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-6)
    assert ours[1].keys() == theirs[1].keys() and any("score" in name for name in ours[1])
    for name, grad in ours[1].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, theirs[1][name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_a_reward_model_learns_to_rank_the_pairs_and_loads_with_stock_peft(tiny_model, pairs_jsonl, tmp_path):
    sink = MemorySink()
    result = run_train(config(tiny_model, pairs_jsonl, tmp_path, validation_ratio=0.25), sink)
    metrics = sink.of_kind("metrics")
    assert result.status == "succeeded" and [m.step for m in metrics] == list(range(1, 7))
    assert metrics[0].loss == pytest.approx(0.6931, abs=0.05)  # a fresh head scores both replies alike
    assert metrics[-1].reward_margin > 2.0 and metrics[-1].reward_accuracy == 1.0 and metrics[-1].loss < 0.1
    evaluation = sink.of_kind("eval")[-1]
    assert evaluation.rows == 3 and evaluation.accuracy == 1.0 and evaluation.reward_margin > 2.0
    artifact = sink.of_kind("artifact")[-1]
    assert artifact.artifact_kind == "adapter" and artifact.metadata["task"] == "reward"
    assert "AutoModelForSequenceClassification" in (Path(result.output_path) / "README.md").read_text()

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    stock = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=1, pad_token_id=tokenizer.pad_token_id), result.output_path).eval()
    probe = torch.tensor([[1, 400, 2000, 77, 5]])
    with torch.no_grad():
        torch.testing.assert_close(stock(probe).logits, result.model.eval()(probe).logits, rtol=1e-5, atol=1e-5)
    model, loaded_tokenizer = load_artifact(result.output_path, base_model=str(tiny_model), task="reward")
    conversations = [[{"role": "user", "content": "What is 3 plus 2?"}, {"role": "assistant", "content": reply}]
                     for reply in ("5.", "I cannot add 3 and 2.")]
    good, bad = score_texts(model, loaded_tokenizer, conversations)
    assert good > bad + 1.0
    # The Evaluate run scores a reward-model artifact by its pairwise accuracy on any pairs.
    from tuning.scoring import EvaluateConfig, run_evaluate

    scored = MemorySink()
    evaluated = run_evaluate(EvaluateConfig.from_dict({
        "artifact_path": result.output_path, "base_model": str(tiny_model), "dataset_path": str(pairs_jsonl),
        "task": "reward", "max_rows": 12}), scored)
    assert evaluated.metrics["rows"] == 12 and evaluated.metrics["accuracy"] == 1.0
    assert scored.of_kind("eval")[0].reward_margin > 2.0


def test_reward_settings_are_refused_where_they_do_not_apply(tiny_model, pairs_jsonl, tmp_path):
    with pytest.raises(ConfigError) as caught:
        config(tiny_model, pairs_jsonl, tmp_path, task="sft", reward_centering=0.01)
    assert caught.value.errors == {"reward_centering": "applies to the reward task only (this job's task is sft)"}
    with pytest.raises(ConfigError) as caught:
        config(tiny_model, pairs_jsonl, tmp_path, beta=0.3)
    assert "preference task only" in caught.value.errors["beta"]
    assert config(tiny_model, pairs_jsonl, tmp_path, reward_centering=0.01).reward_centering == 0.01


def test_unpaired_data_cannot_train_a_reward_model(tiny_model, tmp_path):
    data = tmp_path / "feedback.jsonl"
    data.write_text(json.dumps({"prompt": "Hi", "completion": "Hello", "label": True}) + "\n")
    with pytest.raises(DatasetError) as caught:
        run_train(config(tiny_model, data, tmp_path / "out"), MemorySink())
    assert "chosen" in str(caught.value)
