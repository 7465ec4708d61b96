"""Preference tuning through the studio's own loop: the reward margin grows,
the reference is the adapter switched off (or a frozen copy, or numbers
computed once), a cancel stops within a step and a resume continues
exactly, the output is an ordinary adapter or model, and impossible
settings are refused naming the field."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tuning.config import TrainConfig, check_against_model
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.train import run_train

REPO = Path(__file__).resolve().parents[2]
PAIRS = [{"prompt": f"What is {a} plus {b}?", "chosen": f"{a + b}.", "rejected": f"I cannot add {a} and {b}."}
         for a in range(4) for b in range(3)]


@pytest.fixture
def pairs_jsonl(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in PAIRS) + "\n")
    return path


def config(tiny_model, data, out, **overrides) -> TrainConfig:
    return TrainConfig.from_dict({
        "base_model": str(tiny_model), "dataset_path": str(data), "output_dir": str(out), "task": "preference",
        "max_steps": 6, "batch_size": 4, "learning_rate": 0.01, "warmup_ratio": 0.0, "precision": "fp32",
        "method_params": {"rank": 8, "alpha": 16, "dropout": 0.0}, **overrides})


def test_dpo_with_lora_widens_the_margin_and_the_adapter_loads_in_stock_peft(tiny_model, pairs_jsonl, tmp_path):
    sink = MemorySink()
    result = run_train(config(tiny_model, pairs_jsonl, tmp_path, validation_ratio=0.25), sink)
    metrics = sink.of_kind("metrics")
    assert result.status == "succeeded" and [m.step for m in metrics] == list(range(1, 7))
    # Step 1 scores the untrained adapter: the policy is the reference, every reward 0 and the loss log 2.
    assert metrics[0].reward_margin == 0.0 and metrics[0].loss == pytest.approx(0.693147, abs=1e-5)
    assert metrics[-1].reward_margin > 1.0 and metrics[-1].reward_accuracy == 1.0
    assert metrics[-1].rewards_chosen > metrics[-1].rewards_rejected and metrics[-1].loss < 0.3
    evaluation = sink.of_kind("eval")[-1]
    assert evaluation.rows == 3 and evaluation.accuracy == 1.0 and evaluation.reward_margin > 1.0
    logs = [e.message for e in sink.of_kind("log")]
    assert any("adapter switched off" in m for m in logs)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    probe = torch.tensor([[1, 400, 2000, 77, 5]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    stock = PeftModel.from_pretrained(base, result.output_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(probe).logits, result.model.eval()(probe).logits, rtol=1e-5, atol=1e-5)
    artifact = sink.of_kind("artifact")[-1]
    assert artifact.artifact_kind == "adapter" and artifact.metadata["task"] == "preference"


def test_the_dpo_adapter_folds_and_quantizes_like_any_other(tiny_model, pairs_jsonl, memorisable_jsonl, tmp_path):
    from tuning.merge import run_merge
    from tuning.merge.config import MergeConfig
    from tuning.quantize.config import QuantizeConfig
    from tuning.quantize.run import run_quantize

    adapter = run_train(config(tiny_model, pairs_jsonl, tmp_path / "dpo", max_steps=2), MemorySink()).output_path
    folded = run_merge(MergeConfig.from_dict({"method": "fold", "base_model": str(tiny_model),
                                              "output_dir": str(tmp_path / "folded"), "sources": [adapter]}),
                       MemorySink())
    assert folded.status == "succeeded" and (Path(folded.output_path) / "model.safetensors").exists()
    quantized = run_quantize(QuantizeConfig.from_dict({
        "scheme": "safetensors_bf16", "source_path": folded.output_path, "output_dir": str(tmp_path / "bf16"),
        "eval_dataset_path": str(memorisable_jsonl), "eval_rows": 2, "prompts": ["Hi"], "max_new_tokens": 2}),
        MemorySink())
    assert quantized.status == "succeeded" and quantized.report["size_bytes_after"] < quantized.report[
        "size_bytes_before"]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_precomputed_reference_trains_exactly_as_the_live_one(method, tiny_model, pairs_jsonl, tmp_path):
    """Live: the adapter switched off (LoRA) or a frozen copy of the base (full
    fine-tuning); precomputed: one pass before the first step. Same numbers."""
    params = {"method_params": {} if method == "full" else {"rank": 8, "dropout": 0.0}}
    live, once = MemorySink(), MemorySink()
    run_train(config(tiny_model, pairs_jsonl, tmp_path / "live", method=method, max_steps=3, **params), live)
    run_train(config(tiny_model, pairs_jsonl, tmp_path / "once", method=method, max_steps=3, reference="precomputed",
                     **params), once)
    assert any(("frozen copy" if method == "full" else "switched off") in e.message for e in live.of_kind("log"))
    assert any("computed once" in e.message for e in once.of_kind("log"))
    for a, b in zip(live.of_kind("metrics"), once.of_kind("metrics"), strict=True):
        assert (a.loss, a.reward_margin) == pytest.approx((b.loss, b.reward_margin), rel=1e-4, abs=1e-6)
    assert live.of_kind("metrics")[-1].reward_margin > 0.5


@pytest.mark.parametrize("loss", ["orpo", "simpo", "cpo"])
def test_reference_free_losses_train_without_a_reference(loss, tiny_model, pairs_jsonl, tmp_path):
    sink = MemorySink()
    result = run_train(config(tiny_model, pairs_jsonl, tmp_path, preference_loss=loss, max_steps=5,
                              **({"beta": 2.0} if loss == "simpo" else {})), sink)
    metrics = sink.of_kind("metrics")
    assert result.status == "succeeded" and metrics[-1].loss < metrics[0].loss
    if loss == "cpo":  # its supervised term dominates at first: the chosen reply's likelihood rises
        assert metrics[-1].rewards_chosen > metrics[0].rewards_chosen
    else:
        assert metrics[-1].reward_margin > metrics[0].reward_margin
    assert any("needs no reference model" in e.message for e in sink.of_kind("log"))


@pytest.mark.parametrize("method", ["loha", "adalora"])
def test_other_adapters_train_against_themselves_switched_off(method, tiny_model, pairs_jsonl, tmp_path):
    sink = MemorySink()
    result = run_train(config(tiny_model, pairs_jsonl, tmp_path, method=method, max_steps=2, method_params={}), sink)
    assert result.status == "succeeded" and any("adapter switched off" in e.message for e in sink.of_kind("log"))
    assert sink.of_kind("metrics")[0].reward_margin == 0.0  # a fresh adapter starts as the reference
    assert (Path(result.output_path) / "adapter_config.json").exists()


def test_cancel_stops_within_a_step_and_resume_continues_exactly(tiny_model, pairs_jsonl, tmp_path):
    straight = MemorySink()
    run_train(config(tiny_model, pairs_jsonl, tmp_path / "a", batch_size=2), straight)
    interrupted = MemorySink(stop_after=2)
    stopped = run_train(config(tiny_model, pairs_jsonl, tmp_path / "b", batch_size=2), interrupted)
    assert stopped.status == "cancelled" and stopped.steps == 2
    resumed = MemorySink()
    run_train(config(tiny_model, pairs_jsonl, tmp_path / "b", batch_size=2, resume_from="latest"), resumed)
    expected = [(e.loss, e.reward_margin) for e in straight.of_kind("metrics")]
    got = [(e.loss, e.reward_margin) for e in interrupted.of_kind("metrics") + resumed.of_kind("metrics")]
    assert [e.step for e in resumed.of_kind("metrics")] == [3, 4, 5, 6]
    assert [x for pair in got for x in pair] == pytest.approx([x for pair in expected for x in pair], rel=1e-4,
                                                               abs=1e-6)


def test_pairs_given_as_whole_conversations_train_on_their_last_reply(tiny_model, tmp_path):
    from tuning.data.tasks import load_task_data
    from tuning.models import load_tokenizer

    def conversation(reply):
        return [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "And 2 + 2?"}, {"role": "assistant", "content": reply}]

    data = tmp_path / "conversations.jsonl"
    data.write_text("\n".join(json.dumps({"chosen": conversation(f"{n}."), "rejected": conversation(f"{n + 1}?")})
                              for n in range(4)) + "\n")
    tokenizer = load_tokenizer(str(tiny_model))
    item = load_task_data("preference", data, tokenizer=tokenizer, max_length=256).items[0]
    text = tokenizer.decode(item.chosen.input_ids)
    assert "Hello." in text and "And 2 + 2?" in text  # the earlier turns are the prompt …
    assert tokenizer.decode([t for t in item.chosen.labels if t != -100]).startswith("0.")  # … the reply is trained
    result = run_train(config(tiny_model, data, tmp_path / "out", max_steps=2), MemorySink())
    assert result.status == "succeeded"


def test_the_second_run_reads_the_pairs_from_the_token_cache(tiny_model, pairs_jsonl, tmp_path):
    first, second = MemorySink(), MemorySink()
    run_train(config(tiny_model, pairs_jsonl, tmp_path / "a", max_steps=2), first)
    run_train(config(tiny_model, pairs_jsonl, tmp_path / "b", max_steps=2), second)
    assert any("from cache" in e.message for e in second.of_kind("log"))
    assert [e.loss for e in first.of_kind("metrics")] == [e.loss for e in second.of_kind("metrics")]


def test_cli_trains_preference_from_yaml(tiny_model, pairs_jsonl, tmp_path):
    config_file = tmp_path / "dpo.yaml"
    config_file.write_text(yaml.safe_dump({
        "base_model": str(tiny_model), "dataset_path": str(pairs_jsonl), "output_dir": str(tmp_path / "out"),
        "task": "preference", "preference_loss": "ipo", "beta": 0.5, "max_steps": 2, "batch_size": 2,
        "method_params": {"rank": 4}}))
    done = subprocess.run([sys.executable, "-m", "tuning", "train", str(config_file)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = [json.loads(line)["data"] for line in done.stdout.splitlines() if '"metrics"' in line]
    assert [m["step"] for m in metrics] == [1, 2] and "reward_margin" in metrics[0]
    assert metrics[0]["loss"] == pytest.approx((1 / (2 * 0.5)) ** 2, rel=1e-4)  # IPO with the policy at the reference
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()


BASE = {"base_model": "m", "dataset_path": "d.jsonl", "output_dir": "o"}


@pytest.mark.parametrize("settings, field, words", [
    ({"beta": 0.5}, "beta", "preference task only"),
    ({"task": "preference", "label_smoothing": 0.1}, "label_smoothing", "choose cdpo"),
    ({"task": "preference", "preference_loss": "cdpo"}, "label_smoothing", "above 0"),
    ({"task": "preference", "preference_loss": "orpo", "reference": "precomputed"}, "reference", "no reference"),
    ({"task": "preference", "simpo_gamma": 1.0}, "simpo_gamma", "simpo loss only"),
    ({"task": "preference", "method": "prefix_tuning"}, "task", "does not support"),
    ({"task": "preference", "method": "p_tuning"}, "task", "does not support"),
    ({"task": "preference", "preference_loss": "exo"}, "preference_loss", "must be one of"),
])
def test_impossible_preference_settings_are_refused_naming_the_field(settings, field, words):
    with pytest.raises(ConfigError) as refused:
        TrainConfig.from_dict({**BASE, **settings})
    assert words in refused.value.errors[field]


def test_lora_initialisations_that_rewrite_the_base_are_refused_for_preference(tiny_model, pairs_jsonl, tmp_path):
    with pytest.raises(ConfigError) as refused:
        check_against_model(config(tiny_model, pairs_jsonl, tmp_path, method_params={"init": "pissa"}))
    assert "adapter off" in refused.value.errors["method_params.init"]


def test_sft_data_for_the_preference_task_names_the_missing_columns(tiny_model, memorisable_jsonl, tmp_path):
    from tuning.errors import DatasetError

    with pytest.raises(DatasetError, match="chosen"):
        run_train(config(tiny_model, memorisable_jsonl, tmp_path), MemorySink())


def test_the_memory_estimate_counts_two_sequences_a_pair_and_a_reference_copy():
    from types import SimpleNamespace

    from tuning.methods.memory import estimate_training_memory

    shape = SimpleNamespace(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=1000)

    def estimate(**settings):
        return estimate_training_memory(shape, trainable=1000, total=50_000, batch_size=4, max_length=128, **settings)

    sft, pairs = estimate(task="sft"), estimate(task="preference", fused_loss=True)  # pairs need every log-prob
    assert pairs.activations == 2 * sft.activations and pairs.weights == sft.weights
    assert estimate(task="preference", reference_copy=True).weights == pairs.weights + 50_000 * 4
