"""GRPO with rewards defined without code: the rewards themselves, the
settings that cannot work refused naming the field, the loss and LoRA
gradients against TRL's GRPOTrainer on the same completions, and a short
seeded run whose exact-match reward rises."""

import json
from pathlib import Path

import pytest
import torch

from tuning.config import TrainConfig
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.grpo import completion_logps, group_advantages, grpo_loss
from tuning.grpo_rewards import LAST_NUMBER, exact_match, extract, format_match, length_within
from tuning.train import run_train

BASE = {"base_model": "m", "dataset_path": "d.jsonl", "output_dir": "o", "task": "grpo"}


def test_the_rewards():
    assert extract("So 12 + 30 = 1,042 apples.", LAST_NUMBER) == "1042"
    assert exact_match("The answer is 42.", "42", LAST_NUMBER) == 1.0
    assert exact_match("It is 41, not 42", "#### 41", LAST_NUMBER) == 0.0
    assert exact_match("I do not know", "42", LAST_NUMBER) == 0.0
    assert exact_match("<answer>Paris</answer>", "paris", r"<answer>(.*?)</answer>") == 0.0  # case counts
    assert exact_match("<answer> Paris </answer>", "Paris", r"<answer>(.*?)</answer>") == 1.0
    assert format_match("<think>hm</think> 4", r"^<think>.*</think>") == 1.0
    assert format_match("4", r"^<think>") == 0.0
    assert [length_within(n, 2, 4) for n in (1, 2, 4, 5)] == [0.0, 1.0, 1.0, 0.0]
    assert length_within(500, 3, 0) == 1.0  # no upper bound
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    advantages, stds = group_advantages(rewards, 3)
    assert advantages[0] > 0 > advantages[1] and stds.tolist() == pytest.approx([0.57735, 0.57735], abs=1e-5)


@pytest.mark.parametrize("values, field, words", [
    ({"reward_exact_match": 0}, "reward_exact_match", "at least one reward"),
    ({"answer_pattern": "(unclosed"}, "answer_pattern", "not a regular expression"),
    ({"reward_format": 1.0}, "format_pattern", "needs a pattern"),
    ({"reward_model_weight": 0.5}, "reward_model", "needs a reward model"),
    ({"reward_length": 1.0}, "length_max", "length min or a length max"),
    ({"validation_ratio": 0.2}, "validation_ratio", "no validation loss"),
    ({"task": "sft", "group_size": 8}, "group_size", "grpo task only"),
])
def test_settings_that_cannot_work_are_refused_naming_the_field(values, field, words):
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict({**BASE, **values})
    assert words in caught.value.errors[field]


def test_loss_and_lora_gradients_match_trl_grpo_trainer(tiny_model, tmp_path):
    """Our loss (bnpo aggregation, KL against the adapter switched off, log-probabilities at the
    sampling temperature) against GRPOTrainer._compute_loss on the same prompts, completions and
    advantages."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def lora():
        return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), lora())
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(std=0.2)
    prompt_ids = torch.tensor([[0, 0, 5, 17, 300], [9, 44, 1000, 12, 7], [0, 0, 5, 17, 300], [9, 44, 1000, 12, 7]])
    prompt_mask = (prompt_ids != 0).long()
    completion_ids = torch.tensor([[88, 99, 2, 0], [400, 401, 402, 403], [7, 2, 0, 0], [31, 32, 33, 2]])
    completion_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]])
    advantages = torch.tensor([0.7, -0.7, -0.7, 0.7])
    beta, temperature = 0.04, 0.7

    model.zero_grad()
    with torch.no_grad(), model.disable_adapter():
        ref = completion_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                               temperature=temperature)
    logps = completion_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=temperature)
    loss, kl = grpo_loss(logps, completion_mask, advantages, kl_beta=beta, ref_logps=ref)
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert float(kl) > 0

    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                          reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                          args=GRPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True,
                                          bf16=False, loss_type="bnpo", beta=beta, temperature=temperature,
                                          num_generations=2, per_device_train_batch_size=4,
                                          max_completion_length=4, gradient_checkpointing=False),
                          train_dataset=Dataset.from_list([{"prompt": "Hi"}] * 4), processing_class=tokenizer,
                          peft_config=lora())
    theirs_params = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.requires_grad:
                theirs_params[name].copy_(weight)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.zero_grad()
    trl_loss = trainer._compute_loss(trainer.model, {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": advantages, "ref_per_token_logps": ref,
        "num_items_in_batch": completion_mask.sum()})
    trl_loss.backward()
    torch.testing.assert_close(loss.detach(), trl_loss.detach(), rtol=1e-5, atol=1e-6)
    theirs = {n: p.grad for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert ours.keys() == theirs.keys() and len(ours) == 8
    for name, grad in ours.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, theirs[name], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def taught_sums(tiny_model, tmp_path):
    """(the settings every run on the sums data shares, a tiny model taught the answers' shape by a few
    SFT steps): the starting point of the short policy-gradient runs (GRPO here, ReMax in test_remax.py)."""
    rows = [{"prompt": f"What is {a} plus {b}?", "completion": f"{a + b}"} for a in range(3) for b in range(3)]
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = {"dataset_path": str(data), "warmup_ratio": 0.0, "precision": "fp32"}
    warm = run_train(TrainConfig.from_dict({**common, "base_model": str(tiny_model), "task": "sft", "method": "full",
                                            "output_dir": str(tmp_path / "sft"), "max_steps": 40, "batch_size": 9,
                                            "learning_rate": 0.02}), MemorySink())
    return common, warm


def test_a_short_grpo_run_raises_the_exact_match_reward(tiny_model, tmp_path):
    """A tiny model first taught the answers' shape (a few SFT steps), then GRPO with the exact-match
    reward alone: the mean reward of the last steps exceeds the first steps' (seeded). Each step
    reports the reward, its spread within groups, each reward's mean, the completions' length and a
    few sampled completions; the adapter saves and loads."""
    common, warm = taught_sums(tiny_model, tmp_path)
    sink = MemorySink()
    result = run_train(TrainConfig.from_dict({
        **common, "base_model": warm.output_path, "task": "grpo", "output_dir": str(tmp_path / "grpo"),
        "max_steps": 8, "batch_size": 9, "learning_rate": 0.02, "group_size": 4, "max_completion_length": 4,
        "seed": 1, "method_params": {"rank": 8, "alpha": 16, "dropout": 0.0}}), sink)
    metrics = sink.of_kind("metrics")
    assert result.status == "succeeded" and [m.step for m in metrics] == list(range(1, 9))
    first, last = [m.reward_mean for m in metrics[:2]], [m.reward_mean for m in metrics[-3:]]
    assert sum(last) / 3 > sum(first) / 2 + 0.05, [m.reward_mean for m in metrics]
    assert set(metrics[0].reward_parts) == {"exact_match"} and metrics[0].completion_length <= 4
    assert len(metrics[0].samples) == 4 and {"prompt", "completion", "reward"} <= set(metrics[0].samples[0])
    assert (Path(result.output_path) / "adapter_model.safetensors").exists()


def test_rewards_find_each_prompts_own_answer_across_files(tiny_model, tmp_path):
    """Rows of a zip's two files share row numbers (row 1 of each): the exact-match reward still compares
    each completion with its own prompt's answer. The completions given are exactly each prompt's answer,
    so every reward is 1; with the answers keyed by row number within a file, half would score 0."""
    import zipfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuning.data.prompts import collate_prompts, read_prompts
    from tuning.train_model import device_and_autocast, grpo_objective

    data = tmp_path / "sums.zip"
    with zipfile.ZipFile(data, "w") as archive:
        for name, start in (("a.jsonl", 10), ("b.jsonl", 20)):
            archive.writestr(name, "".join(json.dumps({"prompt": f"What is {n} plus 0?", "completion": f"{n}"})
                                           + "\n" for n in (start, start + 1)))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompts, dropped = read_prompts(data, tokenizer, max_length=64)
    assert dropped == () and [p.row for p in prompts] == [1, 2, 1, 2]
    assert [p.answer for p in prompts] == ["10", "11", "20", "21"] and len({p.key for p in prompts}) == 4

    config = TrainConfig.from_dict({"base_model": str(tiny_model), "dataset_path": str(data), "task": "grpo",
                                    "output_dir": str(tmp_path / "out"), "group_size": 2})
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    objective = grpo_objective(config, MemorySink(), model, tokenizer, prompts, device_and_autocast("fp32"))
    batch = collate_prompts(prompts, pad_token_id=tokenizer.pad_token_id or 0)
    answers = [tokenizer(p.answer, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(a) for a in answers)
    completion_ids = torch.tensor([a + [tokenizer.eos_token_id] * (width - len(a)) for a in answers])
    completion_mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers])
    rewards, parts = objective.score(batch["prompt_key"].tolist(), completion_ids, completion_mask)
    assert parts["exact_match"] == [1.0, 1.0, 1.0, 1.0] and rewards.tolist() == [1.0, 1.0, 1.0, 1.0]
