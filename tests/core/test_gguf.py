"""GGUF export of the tiny Llama, read back with gguf's own reader and with
transformers (hidden size 32 and intermediate size 64 fill whole 32-value
q8_0/q4_0 blocks, so every 2-D weight is quantized)."""

import json

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuning.errors import ModelError
from tuning.quantize.common import Cancelled
from tuning.quantize.gguf_export import export_gguf, gguf_filename

TYPES = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
         "q4_0": gguf.GGMLQuantizationType.Q4_0}


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    return {kind: export_gguf(tiny_model, out / gguf_filename(kind), gguf_type=kind) for kind in TYPES}


@pytest.fixture(scope="module")
def readers(exported):
    return {}  # filled lazily: parsing the 49k-token vocabulary takes seconds per file


def _reader(readers, exported, kind) -> gguf.GGUFReader:
    if kind not in readers:
        readers[kind] = gguf.GGUFReader(exported[kind])
    return readers[kind]


def _field(reader, key):
    return reader.fields[key].contents()


@pytest.mark.parametrize("kind", list(TYPES))
def test_every_tensor_is_written_with_its_shape_and_type(kind, exported, readers, tiny_model):
    reader = _reader(readers, exported, kind)
    weights = load_file(tiny_model / "model.safetensors")
    config = json.loads((tiny_model / "config.json").read_text())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    expected = {names.get_name(name, try_suffixes=(".weight",)): tuple(tensor.shape)
                for name, tensor in weights.items() if name != "lm_head.weight"}
    tensors = {tensor.name: tensor for tensor in reader.tensors}

    assert set(tensors) == set(expected)
    assert "output.weight" not in tensors  # tied embeddings: llama.cpp reuses token_embd
    for name, tensor in tensors.items():
        assert tuple(int(n) for n in tensor.shape[::-1]) == expected[name], name  # GGUF lists dims innermost first
        want = gguf.GGMLQuantizationType.F32 if len(expected[name]) == 1 else TYPES[kind]
        if name == "token_embd.weight" and kind == "q4_0":
            # The tied output head keeps more bits in a 4-bit file, as llama.cpp's quantizer does.
            want = gguf.GGMLQuantizationType.Q8_0
        assert tensor.tensor_type == want, name


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_metadata_and_tokenizer(kind, exported, readers, tiny_model):
    reader = _reader(readers, exported, kind)
    config = json.loads((tiny_model / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer_json = json.loads((tiny_model / "tokenizer.json").read_text())

    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.file_type") == {"f16": 1, "q8_0": 7}[kind]
    assert _field(reader, "llama.block_count") == config["num_hidden_layers"] == 2
    assert _field(reader, "llama.context_length") == config["max_position_embeddings"]
    assert _field(reader, "llama.embedding_length") == 32
    assert _field(reader, "llama.feed_forward_length") == 64
    assert _field(reader, "llama.attention.head_count") == 4
    assert _field(reader, "llama.attention.head_count_kv") == 2
    assert _field(reader, "llama.rope.dimension_count") == 8
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(config["rms_norm_eps"])
    assert _field(reader, "llama.vocab_size") == config["vocab_size"]

    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"  # ByteLevel with GPT-2's regex
    assert len(tokens) == config["vocab_size"] == len(tokenizer)
    assert tokens[tokenizer.convert_tokens_to_ids("Ġthe")] == "Ġthe"
    types = _field(reader, "tokenizer.ggml.token_type")
    control = {i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL}
    assert control == {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    assert len(_field(reader, "tokenizer.ggml.merges")) == len(tokenizer_json["model"]["merges"])
    assert _field(reader, "tokenizer.ggml.bos_token_id") == tokenizer.bos_token_id == 1
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id == 2
    assert _field(reader, "tokenizer.ggml.padding_token_id") == tokenizer.pad_token_id
    assert _field(reader, "tokenizer.chat_template") == tokenizer.chat_template


def test_weights_match_with_q_and_k_rows_interleaved_per_head(exported, readers, tiny_model):
    """llama.cpp rotates adjacent pairs (2i, 2i+1) of each head; Hugging Face
    rotates (i, i + head_dim/2). Row 2i of a GGUF head is HF row i, row
    2i+1 is HF row i + head_dim/2."""
    reader = _reader(readers, exported, "f16")
    tensors = {tensor.name: np.asarray(tensor.data, dtype=np.float32) for tensor in reader.tensors}
    weights = {name: tensor.numpy() for name, tensor in load_file(tiny_model / "model.safetensors").items()}
    head_dim = 8
    for gguf_name, hf_name, heads in (("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", 4),
                                      ("blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight", 2)):
        written, original = tensors[gguf_name], weights[hf_name]
        for head in range(heads):
            for i in range(head_dim // 2):
                base = head * head_dim
                np.testing.assert_allclose(written[base + 2 * i], original[base + i], rtol=1e-3, atol=1e-3)
                np.testing.assert_allclose(written[base + 2 * i + 1], original[base + i + head_dim // 2],
                                           rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(tensors["blk.0.attn_v.weight"], weights["model.layers.0.self_attn.v_proj.weight"],
                               rtol=1e-3, atol=1e-3)  # v is not rotated: unchanged
    np.testing.assert_allclose(tensors["token_embd.weight"], weights["model.embed_tokens.weight"], rtol=1e-3,
                               atol=1e-3)

    q8 = next(t for t in _reader(readers, exported, "q8_0").tensors if t.name == "blk.0.attn_v.weight")
    dequantized = gguf.quants.dequantize(q8.data, q8.tensor_type)
    original = weights["model.layers.0.self_attn.v_proj.weight"]
    assert np.abs(dequantized - original).max() <= np.abs(original).max() / 127 + 1e-6  # within one int8 step


# transformers parses the 49k-token vocabulary: 9-20 s a file on two shared cores
@pytest.mark.parametrize("kind,tolerance", [("f16", 0.01), ("q8_0", 0.1)])
def test_transformers_reloads_the_file_with_close_logits(kind, tolerance, exported, tiny_model):
    ids = torch.tensor([[1, 400, 2000, 77, 5, 9000, 31, 2]])
    original = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    reloaded = AutoModelForCausalLM.from_pretrained(exported[kind].parent, gguf_file=exported[kind].name,
                                                    dtype=torch.float32)
    with torch.no_grad():
        expected, got = original(ids).logits, reloaded(ids).logits
    # relative to the largest logit: f16 rounding moves the logits by ~0.3%, q8_0 by ~6%
    assert (got - expected).abs().max() <= tolerance * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= (1.0 if kind == "f16" else 0.75)


def test_non_llama_models_are_refused_naming_their_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ModelError, match="model_type is 'gpt2'"):
        export_gguf(tmp_path, tmp_path / "out.gguf", gguf_type="q8_0")
    assert not (tmp_path / "out.gguf").exists()


def test_stop_between_tensors(tiny_model, tmp_path):
    written = []
    with pytest.raises(Cancelled):
        export_gguf(tiny_model, tmp_path / "x.gguf", gguf_type="q8_0",
                    progress=lambda done, total: written.append(done), should_stop=lambda: len(written) >= 2)
    assert written == [1, 2]
