"""Every supported family, end to end, on tiny random-weight models built
from each architecture's config class (tests/tiny_architectures.py; the
tiny Llama with the bundled SmolLM2 tokenizer stands for the bundled model):

LoRA training (tuning.train) → the adapter loads in stock peft → fold →
merge of two fine-tunes (tuning.merge) → GGUF f16 and q8_0 (tuning.quantize)
read back with the gguf package (architecture, shapes, tokenizer) and with
transformers → the playground's generation (tuning.generate) answers, the
f16 file greedily token for token like its source.

Each family's chain is built once (``Chain`` caches every step) and each
test checks one step, so a failure names the family and the step.
"""

import json
from functools import cache
from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.tiny_architectures import tiny_family_dir
from tests.tiny_model import tiny_model_dir
from tuning.config import TrainConfig
from tuning.events import MemorySink
from tuning.generate import _encode, generate_stream
from tuning.loading import load_artifact
from tuning.merge import run_merge
from tuning.merge.config import MergeConfig
from tuning.quantize import export_support
from tuning.quantize.config import QuantizeConfig
from tuning.quantize.run import run_quantize
from tuning.train import run_train

# family -> (GGUF architecture, GGUF tokenizer model); smollm2 is the bundled model's shape
EXPECTED = {"llama": ("llama", "gpt2"), "mistral": ("llama", "llama"), "qwen2": ("qwen2", "gpt2"),
            "qwen3": ("qwen3", "gpt2"), "gemma2": ("gemma2", "llama"), "gemma3": ("gemma3", "llama"),
            "phi3": ("phi3", "llama"), "smollm2": ("llama", "gpt2")}
# the bundled model's 49k-token vocabulary makes its GGUF legs take a minute
GGUF_FAMILIES = [pytest.param(name, marks=pytest.mark.slow) if name == "smollm2" else name for name in EXPECTED]
DATA = {
    "colours": [{"instruction": "Say the colour of the sky.", "output": "Blue."},
                {"instruction": "Say the colour of grass.", "output": "Green."}],
    "counting": [{"instruction": "Count to three.", "output": "One, two, three."},
                 {"instruction": "Greet me.", "output": "Hello!"}],
}
PROMPT = "Say hello."


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


def _greedy(model, tokenizer, tokens: int) -> list[int]:
    inputs = _encode(tokenizer, PROMPT, None)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return output[0, inputs["input_ids"].shape[1]:].tolist()


class Chain:
    """One family's models, each step made on first use."""

    def __init__(self, family: str, root: Path):
        self.family, self.root = family, root / family
        self.base = tiny_model_dir() if family == "smollm2" else tiny_family_dir(family)

    @cache
    def adapter(self, data: str) -> Path:
        rows = self.root / f"{data}.jsonl"
        rows.parent.mkdir(parents=True, exist_ok=True)
        rows.write_text("".join(json.dumps(row) + "\n" for row in DATA[data] * 2))
        config = TrainConfig.from_dict({
            "base_model": str(self.base), "dataset_path": str(rows), "output_dir": str(self.root / f"lora-{data}"),
            "max_steps": 4, "batch_size": 4, "learning_rate": 0.02, "warmup_ratio": 0.0, "precision": "fp32",
            "method_params": {"rank": 4, "alpha": 8, "dropout": 0.0}})
        result = run_train(config, MemorySink())
        assert result.status == "succeeded", result
        return Path(result.output_path)

    def _merge(self, method: str, sources: list[Path], out: str) -> Path:
        config = MergeConfig.from_dict({"method": method, "base_model": str(self.base),
                                        "output_dir": str(self.root / out), "sources": [str(s) for s in sources]})
        result = run_merge(config, MemorySink())
        assert result.status == "succeeded", result
        return Path(result.output_path)

    @cache
    def folded(self, data: str) -> Path:
        return self._merge("fold", [self.adapter(data)], f"fold-{data}")

    @cache
    def merged(self) -> Path:
        return self._merge("task_arithmetic", [self.folded("colours"), self.folded("counting")], "merged")

    @cache
    def gguf(self, kind: str) -> Path:
        config = QuantizeConfig.from_dict({"scheme": f"gguf_{kind}", "source_path": str(self.merged()),
                                           "output_dir": str(self.root / f"gguf-{kind}"), "report": False})
        result = run_quantize(config, MemorySink())
        assert result.status == "succeeded", result
        return Path(result.output_path)


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    root = tmp_path_factory.mktemp("architectures")
    made: dict[str, Chain] = {}
    return lambda family: made.setdefault(family, Chain(family, root))


@pytest.mark.parametrize("family", list(EXPECTED))
def test_lora_trains_and_the_adapter_loads_in_stock_peft(chains, family):
    from peft import PeftModel

    chain = chains(family)
    adapter = chain.adapter("colours")
    assert json.loads((adapter / "adapter_config.json").read_text())["peft_type"] == "LORA"
    base = AutoModelForCausalLM.from_pretrained(chain.base, dtype=torch.float32)
    ids = AutoTokenizer.from_pretrained(chain.base)(PROMPT, return_tensors="pt").input_ids
    before = _logits(base, ids)
    tuned = PeftModel.from_pretrained(base, str(adapter))
    assert not torch.allclose(_logits(tuned, ids), before, atol=1e-4)  # the trained adapter changes the model


@pytest.mark.parametrize("family", list(EXPECTED))
def test_fold_and_a_merge_of_two_fine_tunes_reload_in_stock_transformers(chains, family):
    from peft import PeftModel

    chain = chains(family)
    ids = AutoTokenizer.from_pretrained(chain.base)(PROMPT, return_tensors="pt").input_ids
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # noqa: E731
    with_adapter = PeftModel.from_pretrained(load(chain.base), str(chain.adapter("colours")))
    torch.testing.assert_close(_logits(load(chain.folded("colours")), ids), _logits(with_adapter, ids),
                               rtol=1e-4, atol=1e-4)
    merged = _logits(load(chain.merged()), ids)
    assert torch.isfinite(merged).all()
    for data in DATA:
        assert not torch.allclose(merged, _logits(load(chain.folded(data)), ids), atol=1e-4)
    assert json.loads((chain.merged() / "config.json").read_text())["model_type"] == \
        json.loads((chain.base / "config.json").read_text())["model_type"]


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_gguf_export_reads_back_with_its_architecture_and_tokenizer(chains, family, kind):
    chain = chains(family)
    out = chain.gguf(kind)
    reader = gguf.GGUFReader(out / f"model-{kind}.gguf")
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    config = json.loads((chain.merged() / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(chain.merged())
    arch, tokenizer_model = EXPECTED[family]

    assert field("general.architecture") == arch
    assert field("general.file_type") == {"f16": 1, "q8_0": 7}[kind]
    assert field(f"{arch}.block_count") == config["num_hidden_layers"]
    assert field(f"{arch}.embedding_length") == config["hidden_size"]
    assert field(f"{arch}.attention.head_count_kv") == config["num_key_value_heads"]
    assert field("tokenizer.ggml.model") == tokenizer_model
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == config["vocab_size"] == len(tokenizer)
    assert [tokens[i] for i in tokenizer(PROMPT).input_ids] == tokenizer.convert_ids_to_tokens(
        tokenizer(PROMPT).input_ids)
    assert field("tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id
    assert field("tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert field("tokenizer.chat_template") == tokenizer.chat_template
    if tokenizer_model == "llama":  # SentencePiece-style: byte pieces typed as such
        types = field("tokenizer.ggml.token_type")
        assert types[tokenizer.convert_tokens_to_ids("<0x41>")] == gguf.TokenType.BYTE
    quantized = {t.name for t in reader.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q8_0}
    assert (kind == "q8_0") == bool(quantized)
    assert export_support(config)[f"gguf_{kind}"] is None

    # transformers' own GGUF loader, without the tokenizer files beside it: the tokenizer inside the file
    alone = out.parent / f"{out.name}-alone"
    alone.mkdir(exist_ok=True)
    (alone / f"model-{kind}.gguf").unlink(missing_ok=True)
    (alone / f"model-{kind}.gguf").symlink_to(out / f"model-{kind}.gguf")
    from_file = AutoTokenizer.from_pretrained(alone, gguf_file=f"model-{kind}.gguf")
    text = "Say hello to 42 friends."
    assert from_file(text).input_ids == tokenizer(text).input_ids
    assert from_file.chat_template == tokenizer.chat_template


@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_the_gguf_files_answer_like_their_source(chains, family):
    """What the playground worker does: load_artifact, then generate_stream.
    f16 gives the source's greedy tokens; q8_0 mostly the same next-token
    choices along the source's reply (a random tiny model has near ties, and
    one different token changes every later one, so q8_0 is compared
    position by position along the same text rather than by free generation)."""
    chain = chains(family)
    source, source_tokenizer = load_artifact(chain.merged())
    expected = _greedy(source, source_tokenizer, 16)
    text = torch.cat([_encode(source_tokenizer, PROMPT, None)["input_ids"], torch.tensor([expected])], dim=1)
    choices = _logits(source, text).argmax(-1)
    for kind, least in (("f16", 1.0), ("q8_0", 0.75)):
        model, tokenizer = load_artifact(chain.gguf(kind))
        assert tokenizer.chat_template == source_tokenizer.chat_template
        if kind == "f16":
            assert _greedy(model, tokenizer, 16) == expected
        agreement = (_logits(model, text).argmax(-1) == choices).float().mean().item()
        assert agreement >= least, (kind, agreement)
        reply = generate_stream(model, tokenizer, PROMPT, max_new_tokens=8)
        pieces = list(reply)
        assert "".join(pieces).strip() or reply.empty_reason, "an empty answer must say why"


@pytest.mark.parametrize("model_type", ["gpt2", "bert", "mixtral"])
def test_a_family_without_a_gguf_writer_is_refused_by_name_before_queueing(model_type):
    support = export_support(model_type)
    assert "GGUF export supports" in support["gguf_q8_0"] and f"'{model_type}'" in support["gguf_q8_0"]
    assert support["safetensors_bf16"] is None and support["torchao_int8"] is None


def test_export_support_names_a_layout_gguf_cannot_hold():
    config = json.loads((tiny_family_dir("gemma3") / "config.json").read_text())
    config["layer_types"] = ["full_attention", "sliding_attention"]
    assert "every sixth layer" in export_support(config)["gguf_f16"]
    llama = json.loads((tiny_family_dir("llama") / "config.json").read_text())
    llama["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    assert "rope scaling type 'yarn'" in export_support(llama)["gguf_q4_0"]
    assert export_support("qwen2") == {name: None for name in export_support("qwen2")}


def test_llama3_rope_scaling_is_written_as_the_factors_llama_cpp_divides_by(tmp_path):
    """Llama 3.1+: each rope frequency's divisor, by Meta's published rule
    (1 for short wavelengths, ``factor`` for long ones, smoothed between)."""
    import math

    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_architectures import FAMILIES, build_tokenizer
    from tuning.quantize.gguf_export import export_gguf

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    tokenizer = build_tokenizer(FAMILIES["llama"])
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, rope_parameters=rope)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert export_support(json.loads((tmp_path / "config.json").read_text()))["gguf_q8_0"] is None
    reader = gguf.GGUFReader(export_gguf(tmp_path, tmp_path / "m.gguf", gguf_type="q8_0"))
    [factors] = [t.data for t in reader.tensors if t.name == "rope_freqs.weight"]

    expected = []
    for i in range(0, 32, 2):
        wavelength = 2 * math.pi * rope["rope_theta"] ** (i / 32)
        if wavelength < 64 / rope["high_freq_factor"]:
            expected.append(1.0)
        elif wavelength > 64 / rope["low_freq_factor"]:
            expected.append(rope["factor"])
        else:
            smooth = (64 / wavelength - rope["low_freq_factor"]) / (rope["high_freq_factor"] - rope["low_freq_factor"])
            expected.append(1 / ((1 - smooth) / rope["factor"] + smooth))
    assert factors.tolist() == pytest.approx(expected, rel=1e-5)
    assert 1.0 in expected and rope["factor"] in expected and len(set(expected)) > 2  # all three regimes


def test_an_image_text_checkpoint_is_refused_by_name_before_training(tmp_path):
    from transformers import Gemma3Config

    from tuning.config import check_against_model
    from tuning.errors import ConfigError

    folder = tmp_path / "gemma-3-4b"
    Gemma3Config(architectures=["Gemma3ForConditionalGeneration"]).save_pretrained(folder)
    config = TrainConfig.from_dict({"base_model": str(folder), "dataset_path": "d", "output_dir": "o"})
    with pytest.raises(ConfigError) as caught:
        check_against_model(config)
    assert caught.value.errors["base_model"].startswith("Gemma3ForConditionalGeneration is an image-text model")
