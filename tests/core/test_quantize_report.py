"""The quantization report's parts (tuning.quantize.report): each is a
setting, a part switched off is absent, the progress events name the phases
in order with an estimate, and a GGUF file read back into the source model
(gguf_readback) holds what transformers' own GGUF loader reads."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.quantize.config import QuantizeConfig
from tuning.quantize.gguf_readback import load_gguf_into
from tuning.quantize.run import run_quantize

ROWS = [{"instruction": "Say the colour of the sky.", "output": "Blue."},
        {"instruction": "Greet me.", "output": "Hello!"}]


def _run(tiny_model, tmp_path, scheme, **overrides):
    config = QuantizeConfig.from_dict({"scheme": scheme, "source_path": str(tiny_model),
                                       "output_dir": str(tmp_path / scheme), "prompts": ["Hi.", "Count to three."],
                                       "max_new_tokens": 3, **overrides})
    sink = MemorySink()
    return run_quantize(config, sink), sink


def test_parts_switched_off_are_absent_and_those_on_are_there(tiny_model, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    result, _ = _run(tiny_model, tmp_path, "safetensors_fp16", report_agreement=False)
    report = result.report
    assert report["parts"] == [] and report["size_bytes_after"] < report["size_bytes_before"]
    for key in ("answers", "agreement_top1", "perplexity_before", "tokens_per_s_before", "dtype_before"):
        assert key not in report, key
    assert "Perplexity" not in (tmp_path / "safetensors_fp16" / "README.md").read_text()

    result, _ = _run(tiny_model, tmp_path / "all", "safetensors_fp16", eval_dataset_path=str(data),
                     report_answers=True, report_speed=True)
    report = result.report
    assert report["parts"] == ["perplexity", "answers", "agreement", "speed"]
    assert report["eval_rows"] == 2 and report["perplexity_after"] > 0 and report["tokens_per_s_after"] > 0
    assert [a["prompt"] for a in report["answers"]] == ["Hi.", "Count to three."]
    # fp16 rounding: the same next token nearly everywhere, a KL divergence near zero
    assert report["agreement_top1"] >= 0.9 and 0 <= report["agreement_kl"] < 0.01 and report["agreement_tokens"] > 6


def test_gguf_report_phases_arrive_in_order_with_an_estimate(tiny_model, tmp_path):
    default = QuantizeConfig.from_dict({"scheme": "gguf_q8_0", "source_path": "x", "output_dir": "y"})
    assert (default.report_answers, default.report_agreement, default.report_speed) == (False, True, False)
    result, sink = _run(tiny_model, tmp_path, "gguf_q8_0", report_answers=True)
    assert result.report["parts"] == ["answers", "agreement"] and "answers" in result.report
    assert "tokens_per_s_before" not in result.report and "perplexity_before" not in result.report
    assert result.report["measured_by"].startswith("the GGUF file")
    events = sink.of_kind("progress")
    phases = list(dict.fromkeys(event.phase for event in events))
    assert phases == ["Writing GGUF q8_0", "Report: loading the source model", "Report: answering 2 prompts (source)",
                      "Report: agreement on 2 prompts (source)", "Report: reading the GGUF file back",
                      "Report: answering 2 prompts (output)", "Report: agreement on 2 prompts (output)"]
    for phase in phases:
        mine = [event for event in events if event.phase == phase]
        assert [event.done for event in mine] == list(range(1, mine[0].total + 1)), phase
        assert all(event.eta_s is not None and event.elapsed_s >= 0 for event in mine), phase
        assert mine[-1].eta_s == 0 and mine[-1].done == mine[-1].total
    writing = [event for event in events if event.phase == "Writing GGUF q8_0"]
    assert writing[0].unit == "tensors" and writing[0].total == len(writing) > 10
    assert [e for e in events if e.phase.startswith("Report: answering")][0].unit == "tokens"


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_a_gguf_file_read_back_holds_what_transformers_reads(kind, tiny_model, tmp_path):
    from tuning.quantize.gguf_export import export_gguf

    path = export_gguf(tiny_model, tmp_path / f"model-{kind}.gguf", gguf_type=kind)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    done = []
    load_gguf_into(model, path, tiny_model, progress=lambda d, t: done.append((d, t)))
    stock = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).state_dict()
    mine = model.state_dict()
    assert set(mine) == set(stock)
    for name, value in mine.items():
        assert torch.equal(value, stock[name]), name
    assert done[-1][0] == done[-1][1] and len(done) == done[-1][1]
    changed = sum(not torch.equal(before[name], mine[name]) for name in mine)
    assert changed > 0  # the file's rounding is there: it was not the source's weights all along


def test_report_settings_are_checked_by_name():
    with pytest.raises(ConfigError) as caught:
        QuantizeConfig.from_dict({"scheme": "gguf_q8_0", "source_path": "x", "output_dir": "y",
                                  "report_answers": "maybe", "eval_rows": 0})
    assert set(caught.value.errors) == {"report_answers", "eval_rows"}
