import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tuning.config import TrainConfig
from tuning.events import MemorySink
from tuning.train import run_train

REPO = Path(__file__).resolve().parents[2]


def config(tiny_model, data, out, **overrides) -> TrainConfig:
    return TrainConfig.from_dict({
        "base_model": str(tiny_model), "dataset_path": str(data), "output_dir": str(out), "max_steps": 20,
        "batch_size": 4, "learning_rate": 0.02, "warmup_ratio": 0.0, "precision": "fp32",
        "method_params": {"rank": 8, "alpha": 16, "dropout": 0.0}, **overrides})


def test_lora_learns_and_the_adapter_reloads_in_stock_peft(tiny_model, memorisable_jsonl, tmp_path):
    sink = MemorySink()
    result = run_train(config(tiny_model, memorisable_jsonl, tmp_path), sink)

    losses = [event.loss for event in sink.of_kind("metrics")]
    assert result.status == "succeeded" and len(losses) == 20
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] * 0.8, losses  # it memorises the batch

    adapter = Path(result.output_path)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in adapter.iterdir()}
    card = (adapter / "README.md").read_text()
    assert "memorise.jsonl" in card and "LoRA" in card and f"{result.final_loss:.4f}" in card

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    device = next(result.model.parameters()).device  # a GPU where the run had one
    probe = torch.tensor([[1, 400, 2000, 77, 5]], device=device)
    with torch.no_grad():
        studio_logits = result.model.eval()(probe).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).to(device)
        stock = PeftModel.from_pretrained(base, adapter).eval()
        stock_logits = stock(probe).logits
        plain_logits = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).to(device)(probe).logits
    torch.testing.assert_close(stock_logits, studio_logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain_logits, studio_logits, atol=1e-4)  # the adapter changed something


def test_stop_request_ends_within_one_step_and_keeps_a_checkpoint(tiny_model, memorisable_jsonl, tmp_path):
    sink = MemorySink(stop_after=3)
    result = run_train(config(tiny_model, memorisable_jsonl, tmp_path, max_steps=50, save_every=1000), sink)
    assert result.status == "cancelled" and result.steps == 3
    assert len(sink.of_kind("metrics")) == 3
    checkpoint = Path(sink.of_kind("checkpoint")[-1].path)
    assert checkpoint.name == "step-0000003" and (checkpoint / "adapter_model.safetensors").exists()
    assert not (tmp_path / "adapter").exists()


def test_checkpoints_rotate(tiny_model, memorisable_jsonl, tmp_path):
    run_train(config(tiny_model, memorisable_jsonl, tmp_path, max_steps=6, save_every=2, keep_checkpoints=2),
              MemorySink())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]


def test_cli_prints_the_same_events_as_json_lines(tiny_model, memorisable_jsonl, tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({
        "base_model": str(tiny_model), "dataset_path": str(memorisable_jsonl), "output_dir": str(tmp_path / "out"),
        "max_steps": 3, "batch_size": 2, "method_params": {"rank": 4}}))
    done = subprocess.run([sys.executable, "-m", "tuning", "train", str(config_file)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["data"]["step"] for e in events if e["kind"] == "metrics"] == [1, 2, 3]
    assert events[-2]["kind"] == "artifact"
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()


def test_cli_reports_bad_config_without_a_traceback(tmp_path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text("base_model: m\nbatch_size: -1\n")
    done = subprocess.run([sys.executable, "-m", "tuning", "train", str(config_file)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "batch_size: must be at least 1" in done.stderr and "dataset_path: is required" in done.stderr
    assert "Traceback" not in done.stderr


def test_missing_base_model_is_a_user_error(memorisable_jsonl, tmp_path):
    from tuning.errors import ModelError

    with pytest.raises(ModelError, match="base model directory not found"):
        run_train(config(tmp_path / "nowhere", memorisable_jsonl, tmp_path / "out"), MemorySink())


@pytest.mark.parametrize("packing", [True, False])
def test_resume_continues_exactly_where_the_checkpoint_left_off(packing, tiny_model, memorisable_jsonl, tmp_path):
    straight = MemorySink()
    run_train(config(tiny_model, memorisable_jsonl, tmp_path / "a", max_steps=8, batch_size=2, packing=packing),
              straight)
    assert any("Packing rows" in e.message for e in straight.of_kind("log")) == packing

    interrupted = MemorySink(stop_after=3)
    run_train(config(tiny_model, memorisable_jsonl, tmp_path / "b", max_steps=8, batch_size=2, packing=packing),
              interrupted)
    resumed = MemorySink()
    result = run_train(config(tiny_model, memorisable_jsonl, tmp_path / "b", max_steps=8, batch_size=2,
                              packing=packing, resume_from="latest"), resumed)

    expected = [e.loss for e in straight.of_kind("metrics")]
    got = [e.loss for e in interrupted.of_kind("metrics")] + [e.loss for e in resumed.of_kind("metrics")]
    assert [e.step for e in resumed.of_kind("metrics")] == [4, 5, 6, 7, 8]
    assert got == pytest.approx(expected, rel=1e-4)
    assert result.status == "succeeded"


def test_a_run_resumed_from_its_final_checkpoint_writes_its_output_with_the_last_loss(tiny_model, memorisable_jsonl,
                                                                                         tmp_path):
    # A worker killed after the last step's checkpoint and before the output: the run taken back resumes at
    # the end, takes no step, and must still write its output and report the loss it ended with (it failed on
    # a loss of None and left an artifact behind a failed job).
    first = run_train(config(tiny_model, memorisable_jsonl, tmp_path, max_steps=4, batch_size=2, save_every=2),
                      MemorySink())
    shutil.rmtree(tmp_path / "adapter")
    sink = MemorySink()
    again = run_train(config(tiny_model, memorisable_jsonl, tmp_path, max_steps=4, batch_size=2, save_every=2,
                             resume_from="latest"), sink)
    assert again.status == "succeeded" and again.steps == 4 and not sink.of_kind("metrics")
    assert again.final_loss == pytest.approx(first.final_loss)
    assert f"final loss {first.final_loss:.4f}" in sink.of_kind("log")[-1].message
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()


def test_evaluation_best_checkpoint_and_early_stopping(tiny_model, memorisable_jsonl, tmp_path):
    # With a learning rate of 0 the eval loss never improves after the first
    # evaluation, so patience 2 stops the run at the third one.
    sink = MemorySink()
    result = run_train(config(tiny_model, memorisable_jsonl, tmp_path, max_steps=50, batch_size=1,
                              learning_rate=0.0, validation_ratio=0.25, eval_every=2, early_stopping_patience=2),
                       sink)
    evals = sink.of_kind("eval")
    assert [e.step for e in evals] == [2, 4, 6] and result.steps == 6
    assert [e.best for e in evals] == [True, False, False]
    assert evals[0].perplexity == pytest.approx(__import__("math").exp(evals[0].eval_loss), rel=1e-3)
    assert any("Early stopping at step 6" in e.message for e in sink.of_kind("log"))
    assert (tmp_path / "checkpoints" / "best" / "adapter_model.safetensors").exists()


def test_load_best_at_end_outputs_the_best_weights(tiny_model, memorisable_jsonl, tmp_path):
    sink = MemorySink()
    result = run_train(config(tiny_model, memorisable_jsonl, tmp_path, max_steps=6, batch_size=1,
                              learning_rate=0.05, validation_ratio=0.25, eval_every=2, load_best_at_end=True), sink)
    from safetensors.torch import load_file

    best = load_file(tmp_path / "checkpoints" / "best" / "adapter_model.safetensors")
    output = load_file(Path(result.output_path) / "adapter_model.safetensors")
    assert best.keys() == output.keys()
    assert all(torch.equal(best[key], output[key]) for key in best)


def test_gradient_checkpointing_gives_the_same_first_loss(tiny_model, memorisable_jsonl, tmp_path):
    plain, checkpointed = MemorySink(), MemorySink()
    run_train(config(tiny_model, memorisable_jsonl, tmp_path / "a", max_steps=2), plain)
    run_train(config(tiny_model, memorisable_jsonl, tmp_path / "b", max_steps=2, gradient_checkpointing=True),
              checkpointed)
    assert [e.loss for e in checkpointed.of_kind("metrics")] == pytest.approx(
        [e.loss for e in plain.of_kind("metrics")], rel=1e-5)


def test_packed_and_padded_runs_train_alike_and_count_only_real_tokens(tiny_model, memorisable_jsonl, tmp_path):
    packed, padded = MemorySink(), MemorySink()
    run_train(config(tiny_model, memorisable_jsonl, tmp_path / "a", max_steps=3), packed)
    run_train(config(tiny_model, memorisable_jsonl, tmp_path / "b", max_steps=3, packing=False), padded)
    assert any("Packing rows" in e.message for e in packed.of_kind("log"))
    for sink in (packed, padded):  # both take the fused head + loss path
        assert any(e.message.startswith("Loss computed with the output head") for e in sink.of_kind("log"))
    assert [e.loss for e in packed.of_kind("metrics")] == pytest.approx(
        [e.loss for e in padded.of_kind("metrics")], rel=1e-4)
    # Both count the rows' own tokens; the padded batches computed more than that.
    assert [e.tokens_seen for e in packed.of_kind("metrics")] == [e.tokens_seen for e in padded.of_kind("metrics")]


def test_prompt_methods_fall_back_to_padded_batches(tiny_model, memorisable_jsonl, tmp_path):
    sink = MemorySink()
    run_train(config(tiny_model, memorisable_jsonl, tmp_path, max_steps=1, method="prompt_tuning",
                     method_params={"num_virtual_tokens": 4}), sink)
    assert any("Padded batches instead of packed ones: Prompt tuning prepends virtual tokens" in e.message
               for e in sink.of_kind("log"))


def test_the_second_run_reads_tokenized_data_from_the_cache(tiny_model, memorisable_jsonl, tmp_path):
    first, second = MemorySink(), MemorySink()
    run_train(config(tiny_model, memorisable_jsonl, tmp_path / "a", max_steps=1), first)
    run_train(config(tiny_model, memorisable_jsonl, tmp_path / "b", max_steps=1), second)
    assert not any("tokenized data from cache" in e.message for e in first.of_kind("log"))
    assert any("tokenized data from cache" in e.message for e in second.of_kind("log"))
    assert list((tmp_path / ".token-cache").glob("sft-*.safetensors"))  # beside the output directories
    assert [e.loss for e in second.of_kind("metrics")] == pytest.approx(
        [e.loss for e in first.of_kind("metrics")], rel=1e-6)


def test_tokenizing_reports_progress_before_the_first_step_and_not_from_the_cache(tiny_model, memorisable_jsonl,
                                                                                  tmp_path):
    rows = sum(1 for line in Path(memorisable_jsonl).read_text().splitlines() if line.strip())
    first = MemorySink()
    run_train(config(tiny_model, memorisable_jsonl, tmp_path / "a", max_steps=1, cache_dir=str(tmp_path / "c")), first)
    tokenizing = [e for e in first.events if e.kind == "progress" and e.phase == "Tokenizing rows"]
    assert tokenizing and tokenizing[-1].done == tokenizing[-1].total == rows and tokenizing[-1].unit == "rows"
    kinds = [e.kind for e in first.events]
    assert kinds.index("progress") < kinds.index("metrics")  # the bar fills before training starts
    again = MemorySink()  # the same data tokenized the same way: read from the cache, nothing to report
    run_train(config(tiny_model, memorisable_jsonl, tmp_path / "b", max_steps=1, cache_dir=str(tmp_path / "c")), again)
    assert not [e for e in again.events if e.kind == "progress" and e.phase == "Tokenizing rows"]
