"""Quantization schemes: one parametrised row per scheme that runs on this
machine, plus the refusals, cancelling and adapter folding.

The source is the untrained tiny Llama (fine-tuning it on a CPU shared
with other test runs takes about a minute): its perplexity is huge
(~1.8e5), so the perplexity bound is on the log ratio, and a reload by
hand compares logits, which is what catches a broken output."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuning.config import TrainConfig
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.quantize import QUANT_SCHEMES, describe
from tuning.quantize.config import QuantizeConfig
from tuning.quantize.run import check_quantize_source, run_quantize
from tuning.train import run_train

ROWS = [
    {"instruction": "Say the colour of the sky.", "output": "Blue."},
    {"instruction": "Say the colour of grass.", "output": "Green."},
    {"instruction": "Count to three.", "output": "One, two, three."},
    {"instruction": "Greet me.", "output": "Hello!"},
]
# delta schemes (a fine-tune's change from its base) have their own file: test_quantize_delta.py
CPU_SCHEMES = [name for name, scheme in QUANT_SCHEMES.items() if not scheme.needs_gpu and not scheme.delta]
GPU_SCHEMES = [name for name, scheme in QUANT_SCHEMES.items() if scheme.needs_gpu]
# |log(ppl_after / ppl_before)| (= change in mean loss, nats) and the
# largest logit error relative to the largest logit, per scheme. Measured
# on the tiny model: loss moves 0.0002 (f16), 0.008 (bf16, whose logits move up to 7% of the largest), 0.005 (q8_0),
# 0.012 (int8), 0.19 (torchao int4); the bounds leave room for seeds, not
# for a broken export.
TOLERANCE = {"torchao_int8": (0.05, 0.15), "torchao_int4": (0.5, 1.0), "gguf_q8_0": (0.05, 0.15),
             "gguf_q4_0": (0.5, 1.0), "gguf_f16": (0.01, 0.01), "safetensors_fp16": (0.01, 0.01),
             "safetensors_bf16": (0.03, 0.1), "gguf_q4_k_m": (0.5, 1.0), "gguf_q5_k_m": (0.2, 0.5),
             "gguf_q6_k": (0.05, 0.15)}
# the tiny model's rows (32, 64 values) are below the k-quants' 256-value blocks: its k-quant files hold their
# fallbacks (Q5_0, Q5_1, Q8_0); test_gguf_kquants.py writes a 256-wide model
# the report parses the 49k-token GGUF vocabulary for seconds
SLOW_SCHEMES = {"gguf_f16", "gguf_q4_0", "gguf_q4_k_m", "gguf_q5_k_m", "gguf_q6_k"}


@pytest.fixture(scope="module")
def eval_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "memorise.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def _train(tiny_model, data, out, **overrides):
    config = TrainConfig.from_dict({
        "base_model": str(tiny_model), "dataset_path": str(data), "output_dir": str(out), "max_steps": 30,
        "batch_size": 4, "learning_rate": 0.01, "warmup_ratio": 0.0, "precision": "fp32", "save_every": 1000,
        **overrides})
    return run_train(config, MemorySink())


@pytest.fixture(scope="module")
def trained_adapter(tiny_model, eval_jsonl, tmp_path_factory) -> Path:
    result = _train(tiny_model, eval_jsonl, tmp_path_factory.mktemp("lora"), max_steps=5,
                    method_params={"rank": 8, "alpha": 16, "dropout": 0.0})
    return Path(result.output_path)


def _config(source, out, eval_jsonl, scheme, **overrides) -> QuantizeConfig:
    return QuantizeConfig.from_dict({
        "scheme": scheme, "source_path": str(source), "output_dir": str(out),
        "eval_dataset_path": str(eval_jsonl), "eval_rows": 4, "prompts": ["Say the colour of the sky."],
        "max_new_tokens": 4, "report_answers": True, "report_speed": True, **overrides})


@pytest.mark.parametrize("scheme", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_SCHEMES else name
                                    for name in CPU_SCHEMES])
def test_scheme_writes_a_model_that_reloads_and_keeps_its_perplexity(scheme, tiny_model, eval_jsonl, tmp_path):
    sink = MemorySink()
    result = run_quantize(_config(tiny_model, tmp_path / "out", eval_jsonl, scheme), sink)
    out = Path(result.output_path)
    row = QUANT_SCHEMES[scheme]

    assert result.status == "succeeded" and out == tmp_path / "out"
    assert not (tmp_path / "out.partial").exists()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "README.md", "quantize_report.json"):
        assert (out / name).exists(), name
    assert (out / "chat_template.jinja").exists() or "chat_template" in json.loads(
        (out / "tokenizer_config.json").read_text())
    assert row.how_to_load in (out / "README.md").read_text()

    report = result.report
    for key in ("size_bytes_before", "size_bytes_after", "perplexity_before", "perplexity_after",
                "tokens_per_s_before", "tokens_per_s_after", "answers"):
        assert report[key] is not None, key
    assert report["size_bytes_after"] < report["size_bytes_before"] or scheme.startswith("torchao")
    assert report["eval_rows"] == 4 and report["tokens_per_s_after"] > 0
    assert [a["prompt"] for a in report["answers"]] == ["Say the colour of the sky."]
    assert all(isinstance(a["before"], str) and isinstance(a["after"], str) for a in report["answers"])
    loss_tolerance, logit_tolerance = TOLERANCE[scheme]
    assert abs(math.log(report["perplexity_after"] / report["perplexity_before"])) <= loss_tolerance, report

    [artifact] = sink.of_kind("artifact")
    assert artifact.artifact_kind == "model" and artifact.path == str(out)
    assert artifact.metadata["scheme"] == scheme and artifact.metadata["size_bytes"] == result.size_bytes > 0
    assert artifact.metadata["report"] == report and artifact.metadata["source"] == str(tiny_model)
    phases = {event.phase for event in sink.of_kind("progress")}
    assert f"Writing {row.label}" in phases and "Report: perplexity on 4 rows (output)" in phases

    # reloaded by hand with stock transformers, the way the README says
    kwargs = {"gguf_file": row.gguf_file} if row.gguf_file else {}
    if not row.gguf_file:  # GGUF reloads already ran in the report (and in test_gguf); ~20 s each
        from transformers import AutoTokenizer

        reloaded = AutoModelForCausalLM.from_pretrained(out, **kwargs)
        source = AutoModelForCausalLM.from_pretrained(tiny_model)
        tokenizer = AutoTokenizer.from_pretrained(out)
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Greet me."},
                                              {"role": "assistant", "content": "Hello!"}], tokenize=False)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            expected, got = source(ids).logits, reloaded(ids).logits.float()
        assert (got - expected).abs().max() <= logit_tolerance * expected.abs().max()


def test_describe_lists_every_scheme_with_its_availability():
    rows = [describe(name) for name in QUANT_SCHEMES]
    assert {row["name"] for row in rows} >= {"torchao_int8", "torchao_int4", "bnb_int8", "bnb_nf4", "gguf_f16",
                                             "gguf_q8_0", "gguf_q4_0", "safetensors_fp16", "safetensors_bf16"}
    for row in rows:
        assert row["how_to_load"] and row["format"] and isinstance(row["needs_gpu"], bool)
        assert row["available"] == (row["unavailable_reason"] is None)
    assert describe("gguf_q8_0", check_machine=False)["available"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("scheme", GPU_SCHEMES)
def test_gpu_scheme_is_refused_without_cuda_before_any_work(scheme, tiny_model, eval_jsonl, tmp_path):
    with pytest.raises(ConfigError) as caught:
        run_quantize(_config(tiny_model, tmp_path / "out", eval_jsonl, scheme), MemorySink())
    assert "CUDA GPU" in caught.value.errors["scheme"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    check_quantize_source(_config(tiny_model, tmp_path / "out", eval_jsonl, scheme), on_worker=False)


def test_a_missing_package_is_named(monkeypatch, tiny_model, eval_jsonl, tmp_path):
    row = QUANT_SCHEMES["torchao_int8"]
    monkeypatch.setitem(QUANT_SCHEMES, "torchao_int8", dataclasses.replace(
        row, unavailable_reason=lambda: "torchao is not installed on this worker: pip install torchao"))
    with pytest.raises(ConfigError, match="pip install torchao"):
        run_quantize(_config(tiny_model, tmp_path / "out", eval_jsonl, "torchao_int8"), MemorySink())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("scheme", GPU_SCHEMES)
def test_bitsandbytes_scheme_on_a_gpu(scheme, tiny_model, eval_jsonl, tmp_path):
    result = run_quantize(_config(tiny_model, tmp_path / "out", eval_jsonl, scheme), MemorySink())
    report = result.report
    assert result.status == "succeeded" and report["size_bytes_after"] < report["size_bytes_before"]
    assert abs(math.log(report["perplexity_after"] / report["perplexity_before"])) <= 0.5
    reloaded = AutoModelForCausalLM.from_pretrained(result.output_path, device_map="cuda")
    quantization = reloaded.config.quantization_config  # a BitsAndBytesConfig once loaded, a dict in the file
    method = quantization.get("quant_method") if isinstance(quantization, dict) else quantization.quant_method
    assert method == "bitsandbytes"


class StopAfterProgress(MemorySink):
    """Asks to stop once ``count`` progress events have been seen."""

    def __init__(self, count: int):
        super().__init__()
        self.count = count

    def should_stop(self) -> bool:
        return len(self.of_kind("progress")) >= self.count


@pytest.mark.parametrize("scheme,stop_after", [("gguf_q8_0", 3), ("safetensors_bf16", 0)])
def test_cancel_removes_the_partial_output(scheme, stop_after, tiny_model, eval_jsonl, tmp_path):
    sink = StopAfterProgress(stop_after)
    result = run_quantize(_config(tiny_model, tmp_path / "out", eval_jsonl, scheme), sink)
    assert result.status == "cancelled" and result.output_path == ""
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert not sink.of_kind("artifact")
    assert len(sink.of_kind("progress")) == stop_after  # stopped at the first check after the request


def test_adapter_source_is_merged_into_its_base(trained_adapter, tiny_model, eval_jsonl, tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer

    with pytest.raises(ConfigError) as caught:
        check_quantize_source(_config(trained_adapter, tmp_path / "out", eval_jsonl, "safetensors_bf16"))
    assert "base_model" in caught.value.errors

    config = _config(trained_adapter, tmp_path / "out", eval_jsonl, "safetensors_bf16",
                     base_model=str(tiny_model), report=False)
    result = run_quantize(config, MemorySink())
    assert result.status == "succeeded" and not (tmp_path / "out.merged-source").exists()
    assert not (Path(result.output_path) / "adapter_config.json").exists()

    tokenizer = AutoTokenizer.from_pretrained(result.output_path)
    ids = tokenizer("Say the colour of the sky.", return_tensors="pt").input_ids
    merged = AutoModelForCausalLM.from_pretrained(result.output_path, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        plain = base(ids).logits
        with_adapter = PeftModel.from_pretrained(base, trained_adapter)(ids).logits
        folded = merged(ids).logits
    assert (folded - with_adapter).abs().max() < 0.05 * with_adapter.abs().max()  # bf16 rounding only
    assert (plain - with_adapter).abs().max() > 10 * (folded - with_adapter).abs().max()  # the adapter counts


def test_source_checks_name_the_field(tmp_path, tiny_model, eval_jsonl):
    with pytest.raises(ConfigError) as caught:
        check_quantize_source(_config(tmp_path / "nowhere", tmp_path / "out", eval_jsonl, "gguf_q8_0"))
    assert "not found" in caught.value.errors["source_path"]

    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConfigError) as caught:
        check_quantize_source(_config(gpt2, tmp_path / "out", eval_jsonl, "gguf_q8_0"))
    assert "'gpt2'" in caught.value.errors["scheme"]
    check_quantize_source(_config(gpt2, tmp_path / "out", eval_jsonl, "safetensors_bf16"))  # no GGUF, no refusal

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="neither a model directory"):
        check_quantize_source(_config(empty, tmp_path / "out", eval_jsonl, "safetensors_bf16"))


def test_config_rejects_unknown_schemes_keys_and_bad_prompts(tmp_path):
    with pytest.raises(ConfigError) as caught:
        QuantizeConfig.from_dict({"scheme": "q3_magic", "source_path": "x", "output_dir": "y", "colour": 1,
                                  "prompts": "not a list"})
    assert set(caught.value.errors) == {"scheme", "colour", "prompts"}
    config = QuantizeConfig.from_dict({"scheme": "gguf_q8_0", "source_path": "x", "output_dir": "y"})
    assert len(config.prompts) == 3 and config.eval_rows == 16 and config.max_new_tokens == 32
    assert not config.trust_remote_code


def test_generation_helpers_agree(tiny_model):
    from transformers import AutoTokenizer

    from tuning.generate import generate_stream, generate_text, generation_speed

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = generate_text(model, tokenizer, "Greet me.", max_new_tokens=6, system_prompt="Be brief.")
    pieces = list(generate_stream(model, tokenizer, "Greet me.", max_new_tokens=6, system_prompt="Be brief."))
    assert text and len(pieces) >= 1
    assert "".join(pieces).strip() == text  # greedy: the stream is the same reply, in pieces
    from tuning.generate import _encode

    prompt = tokenizer.decode(_encode(tokenizer, "Greet me.", "Be brief.")["input_ids"][0])
    assert prompt.startswith("<|im_start|>system\nBe brief.") and prompt.endswith("<|im_start|>assistant\n")
    sampled = {generate_text(model, tokenizer, "Greet me.", max_new_tokens=6, temperature=1.5) for _ in range(3)}
    assert len(sampled) > 1  # sampling at a high temperature from a random model varies
    assert generation_speed(model, tokenizer, "Greet me.", 4) > 0
