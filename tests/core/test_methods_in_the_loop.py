"""Every method through the real training loop (hooks, export, checkpoints):
it runs, stops on request with a checkpoint, resumes from it, and saves an
output the stock libraries load."""

from pathlib import Path

import pytest

from tests.core.test_methods import ROWS, biased_model, lora_sources  # noqa: F401  (fixtures)
from tuning.config import TrainConfig
from tuning.errors import ConfigError
from tuning.methods import METHODS
from tuning.events import MemorySink
from tuning.loading import artifact_layout, load_artifact
from tuning.train import run_train


def config(base, data, out, method, params, lr, **overrides):
    return TrainConfig.from_dict({"base_model": str(base), "dataset_path": str(data), "output_dir": str(out),
                                  "method": method, "method_params": params, "learning_rate": lr, "max_steps": 4,
                                  "batch_size": 2, "precision": "fp32", "save_every": 1000, **overrides})


@pytest.mark.parametrize("row", list(ROWS))
def test_method_runs_stops_resumes_and_saves(row, tiny_model, biased_model, memorisable_jsonl, tmp_path):  # noqa: F811
    method, params, lr = ROWS[row]
    base = biased_model if method == "bitfit" else tiny_model
    first = run_train(config(base, memorisable_jsonl, tmp_path, method, params, lr), MemorySink(stop_after=2))
    assert first.status == "cancelled" and Path(first.output_path).name == "step-0000002"

    resume = config(base, memorisable_jsonl, tmp_path, method, params, lr, resume_from="latest")
    if not METHODS[method].resumable:
        with pytest.raises(ConfigError, match="cannot be resumed"):
            run_train(resume, MemorySink())
        return
    sink = MemorySink()
    result = run_train(resume, sink)
    assert result.status == "succeeded" and [e.step for e in sink.of_kind("metrics")] == [3, 4]
    output = Path(result.output_path)
    if artifact_layout(output) in ("bottleneck", "ladder", "mola"):  # no stock library loads these; the card names ours
        load_artifact(output, base_model=str(base))
        assert "load_artifact(" in (output / "README.md").read_text()
    elif output.name == "adapter":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), output)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        AutoModelForCausalLM.from_pretrained(output)
        AutoTokenizer.from_pretrained(output)
    assert "Fine-tuned with Tuning Studio" in (output / "README.md").read_text()
