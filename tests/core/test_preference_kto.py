"""KTO through the studio's own loop: unpaired completions are detected and
read, the desirable completions' rewards rise and the undesirable ones'
fall, pairs train KTO too (split into one completion of each label), the
reference may be computed once, the output loads in stock peft, and data
that does not fit the loss is refused naming the setting."""

import json
from pathlib import Path

import pytest
import torch

from tuning.config import TrainConfig
from tuning.data.cache import load_task_data_cached
from tuning.data.schema import detect
from tuning.data.tasks import collate_for_task, load_task_data, summarize
from tuning.data.unpaired import UnpairedExample
from tuning.errors import ConfigError, DatasetError
from tuning.events import MemorySink
from tuning.train import run_train

ROWS = ([{"prompt": f"What is {a} plus {b}?", "completion": f"{a + b}.", "label": True}
         for a in range(3) for b in range(3)]
        + [{"prompt": f"What is {a} plus {b}?", "completion": f"I cannot add {a} and {b}.", "label": "undesirable"}
           for a in range(3) for b in range(2)])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def unpaired_jsonl(tmp_path) -> Path:
    return write_jsonl(tmp_path / "feedback.jsonl", ROWS)


def config(tiny_model, data, out, **overrides) -> TrainConfig:
    return TrainConfig.from_dict({
        "base_model": str(tiny_model), "dataset_path": str(data), "output_dir": str(out), "task": "preference",
        "preference_loss": "kto", "max_steps": 8, "batch_size": 5, "learning_rate": 0.01, "warmup_ratio": 0.0,
        "precision": "fp32", "method_params": {"rank": 8, "alpha": 16, "dropout": 0.0}, **overrides})


def test_unpaired_rows_are_detected_read_and_tokenized_with_a_mismatched_twin(unpaired_jsonl, tiny_model):
    from transformers import AutoTokenizer

    detection = detect(unpaired_jsonl)
    assert (detection.schema, detection.confidence) == ("unpaired", "sure")
    summary = summarize(unpaired_jsonl, task="preference")
    assert summary.schema == "unpaired" and summary.preview[0].desirable is True
    assert summary.preview[0].completion == "0."
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data = load_task_data("preference", unpaired_jsonl, tokenizer=tokenizer, max_length=64)
    items = data.items
    assert len(items) == 15 and all(isinstance(i, UnpairedExample) for i in items)
    assert [i.desirable for i in items] == [True] * 9 + [False] * 6
    # Row 2's mismatched twin: its own prompt, then row 1's completion (labelled), as TRL joins them.
    first, second = items[0].completion, items[1].completion
    start = [label != -100 for label in second.labels].index(True)
    first_start = [label != -100 for label in first.labels].index(True)
    assert items[1].mismatched.input_ids == second.input_ids[:start] + first.input_ids[first_start:]
    assert items[1].mismatched.labels[start:] == first.labels[first_start:]
    last = items[-1].completion
    last_start = [label != -100 for label in last.labels].index(True)
    assert items[0].mismatched.input_ids[first_start:] == last.input_ids[last_start:]  # the first takes the last
    batch = collate_for_task("preference", pad_token_id=tokenizer.pad_token_id)(items[:3])
    assert batch["desirable"].tolist() == [True, True, True] and batch["kl_input_ids"].shape[0] == 3


def test_a_label_that_is_neither_is_refused_naming_the_row_and_column(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    path = write_jsonl(tmp_path / "bad.jsonl", ROWS[:2] + [{"prompt": "Hi", "completion": "Yo", "label": "maybe"}])
    with pytest.raises(DatasetError) as caught:
        load_task_data("preference", path, tokenizer=AutoTokenizer.from_pretrained(tiny_model), max_length=64)
    assert caught.value.row == 3 and caught.value.field == "label" and "'maybe'" in str(caught.value)


def test_the_token_cache_keeps_labels_and_twins(unpaired_jsonl, tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    stored, how = load_task_data_cached("preference", unpaired_jsonl, tokenizer=tokenizer, max_length=64,
                                        cache_dir=tmp_path / "cache")
    again, hit = load_task_data_cached("preference", unpaired_jsonl, tokenizer=tokenizer, max_length=64,
                                       cache_dir=tmp_path / "cache")
    assert (how, hit) == ("stored", "hit") and again.items == stored.items


def test_kto_with_lora_raises_desirable_rewards_and_the_adapter_loads_in_stock_peft(tiny_model, unpaired_jsonl,
                                                                                      tmp_path):
    sink = MemorySink()
    result = run_train(config(tiny_model, unpaired_jsonl, tmp_path, validation_ratio=0.2), sink)
    metrics = sink.of_kind("metrics")
    assert result.status == "succeeded" and [m.step for m in metrics] == list(range(1, 9))
    # Step 1 scores the untrained adapter: policy = reference, so every reward and z₀ are 0 and the loss 1 - σ(0).
    assert metrics[0].reward_margin == 0.0 and metrics[0].kl == 0.0 and metrics[0].loss == pytest.approx(0.5)
    assert metrics[-1].rewards_chosen > 0.1 > -0.1 > metrics[-1].rewards_rejected
    assert metrics[-1].loss < 0.45 and metrics[-1].reward_accuracy > 0.8
    evaluation = sink.of_kind("eval")[-1]
    assert evaluation.rows == 3 and evaluation.accuracy > 0.6
    assert any("KTO (beta 0.1) against the base model" in e.message for e in sink.of_kind("log"))

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    probe = torch.tensor([[1, 400, 2000, 77, 5]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    stock = PeftModel.from_pretrained(base, result.output_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(probe).logits, result.model.eval()(probe).logits, rtol=1e-5, atol=1e-5)


def test_precomputed_reference_gives_the_same_run(tiny_model, unpaired_jsonl, tmp_path):
    live, once = MemorySink(), MemorySink()
    run_train(config(tiny_model, unpaired_jsonl, tmp_path / "live", max_steps=3), live)
    run_train(config(tiny_model, unpaired_jsonl, tmp_path / "once", max_steps=3, reference="precomputed"), once)
    for a, b in zip(live.of_kind("metrics"), once.of_kind("metrics"), strict=True):
        assert a.loss == pytest.approx(b.loss, abs=1e-5) and a.kl == pytest.approx(b.kl, abs=1e-4)
    assert any("Scoring 15 rows with the reference model once" in e.message for e in once.of_kind("log"))


def test_pairs_train_kto_as_one_desirable_and_one_undesirable_completion(tiny_model, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": f"What is {a} plus {b}?", "chosen": f"{a + b}.", "rejected": f"I cannot add {a} and {b}."}
        for a in range(3) for b in range(2)])
    sink = MemorySink()
    result = run_train(config(tiny_model, pairs, tmp_path / "out", max_steps=6, batch_size=4), sink)
    metrics = sink.of_kind("metrics")
    assert result.status == "succeeded" and metrics[-1].reward_margin > metrics[0].reward_margin + 0.1
    assert any("12 training rows" in e.message for e in sink.of_kind("log"))  # 6 pairs, two completions each


def test_a_pairwise_loss_on_unpaired_data_is_refused_naming_the_loss(tiny_model, unpaired_jsonl, tmp_path):
    with pytest.raises(ConfigError) as caught:
        run_train(config(tiny_model, unpaired_jsonl, tmp_path, preference_loss="dpo"), MemorySink())
    assert "choose kto" in caught.value.errors["preference_loss"]


def test_kto_weights_apply_to_kto_only(tiny_model, unpaired_jsonl, tmp_path):
    with pytest.raises(ConfigError) as caught:
        config(tiny_model, unpaired_jsonl, tmp_path, preference_loss="dpo", desirable_weight=1.5)
    assert caught.value.errors == {"desirable_weight": "applies to the kto loss only (the loss is dpo)"}
    assert config(tiny_model, unpaired_jsonl, tmp_path, undesirable_weight=1.33).undesirable_weight == 1.33


def test_cli_trains_kto_from_yaml(tiny_model, unpaired_jsonl, tmp_path):
    import subprocess
    import sys

    import yaml

    config_file = tmp_path / "kto.yaml"
    config_file.write_text(yaml.safe_dump({
        "base_model": str(tiny_model), "dataset_path": str(unpaired_jsonl), "output_dir": str(tmp_path / "out"),
        "task": "preference", "preference_loss": "kto", "beta": 0.2, "desirable_weight": 1.2, "max_steps": 2,
        "batch_size": 4, "method_params": {"rank": 4}}))
    done = subprocess.run([sys.executable, "-m", "tuning", "train", str(config_file)],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    metrics = [json.loads(line)["data"] for line in done.stdout.splitlines() if '"metrics"' in line]
    assert [m["step"] for m in metrics] == [1, 2] and metrics[0]["kl"] == 0.0
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()
