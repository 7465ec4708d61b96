"""GGUF k-quants (Q4_K_M, Q5_K_M, Q6_K): the numpy writers' blocks read back
by the gguf package's own dequantizer, llama.cpp's choice of type per
tensor, and a whole file of a 256-wide Llama (the tiny test model's rows of
32 and 64 values are below the k-quants' 256-value blocks, so it would be
written in the fallbacks alone) read back, reloaded by transformers and
answering as the playground answers."""

import json
import shutil

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from tuning.events import MemorySink
from tuning.quantize import gguf_kquants
from tuning.quantize.config import QuantizeConfig
from tuning.quantize.gguf_export import export_gguf
from tuning.quantize.gguf_readback import load_gguf_into
from tuning.quantize.run import run_quantize

# relative RMS error on Gaussian weights with an outlier, and the legacy type each must beat
BOUNDS = {"Q4_K": (0.08, "Q4_0"), "Q5_K": (0.04, "Q5_0"), "Q6_K": (0.02, "Q8_0")}


def _relative_error(back, weights) -> float:
    return float(np.sqrt(((back - weights) ** 2).mean() / (weights ** 2).mean()))


@pytest.mark.parametrize("kind", list(BOUNDS))
def test_k_quant_blocks_read_back_with_ggufs_own_dequantizer(kind):
    weights = np.random.default_rng(0).standard_normal((16, 1024)).astype(np.float32) * 0.02
    weights[3, 5] = 0.5  # an outlier in one block
    weights[7] = 0.0  # an all-zero row
    ggml_type = gguf.GGMLQuantizationType[kind]
    data = gguf_kquants.quantize(weights, kind)
    assert data.dtype == np.uint8 and data.shape == gguf.quant_shape_to_byte_shape(weights.shape, ggml_type)
    back = gguf.quants.dequantize(data, ggml_type)
    bound, legacy = BOUNDS[kind]
    assert _relative_error(back, weights) < bound
    legacy_type = gguf.GGMLQuantizationType[legacy]
    legacy_back = gguf.quants.dequantize(gguf.quants.quantize(weights, legacy_type), legacy_type)
    if kind != "Q6_K":  # Q6_K (6.56 bits) is meant to beat Q5, not Q8_0 (8.5 bits)
        assert _relative_error(back, weights) < _relative_error(legacy_back, weights)
    assert np.all(back[7] == 0) and abs(back[3, 5] - 0.5) < 0.05


def test_the_type_of_each_tensor_follows_llama_cpp():
    kind = gguf_kquants.k_quant_type
    out = ("output.weight",)
    assert kind("q4_k_m", "output.weight", (1000, 512), 16, out) == "Q6_K"
    assert kind("q4_k_m", "blk.5.attn_q.weight", (512, 512), 16, out) == "Q4_K"
    # more bits for attn_v and ffn_down on the first and last eighth of the layers and every third between
    more = [layer for layer in range(16) if kind("q4_k_m", f"blk.{layer}.attn_v.weight", (512, 512), 16, out) == "Q6_K"]
    assert more == [0, 1, 4, 7, 10, 13, 14, 15]
    assert kind("q5_k_m", "blk.0.ffn_down.weight", (512, 1024), 16, out) == "Q6_K"
    assert kind("q5_k_m", "blk.2.ffn_down.weight", (512, 1024), 16, out) == "Q5_K"
    assert kind("q6_k", "blk.2.ffn_up.weight", (1024, 512), 16, out) == "Q6_K"
    # rows that are no multiple of 256 fall back as llama.cpp's quantizer does
    assert [kind(t, "blk.2.attn_q.weight", (576, 576), 16, out) for t in ("q4_k_m", "q5_k_m", "q6_k")] == \
        ["Q5_0", "Q5_1", "Q8_0"]


@pytest.fixture(scope="module")
def wide_model(tiny_model, tmp_path_factory):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=0.1, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("wide") / "model"
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_q4_k_m_file_reads_back_reloads_in_transformers_and_answers(wide_model, tmp_path):
    from tuning.generate import generate_replies
    from tuning.loading import load_artifact

    out = tmp_path / "export"
    out.mkdir()
    path = export_gguf(wide_model, out / "model-q4_k_m.gguf", gguf_type="q4_k_m")
    reader = gguf.GGUFReader(path)
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert types["token_embd.weight"] == "Q6_K"  # tied: the output head's type
    assert types["blk.0.attn_q.weight"] == types["blk.0.attn_v.weight"] == "Q4_K"
    assert types["blk.1.attn_v.weight"] == types["blk.1.ffn_down.weight"] == "Q6_K"  # the last eighth
    assert types["blk.0.attn_norm.weight"] == "F32"
    file_type = reader.fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == gguf.LlamaFileType.MOSTLY_Q4_K_M

    # the read-back is gguf's dequantization, tensor for tensor the same as transformers' gguf_file= loader
    model = AutoModelForCausalLM.from_pretrained(wide_model, dtype=torch.float32)
    source = {name: value.clone() for name, value in model.state_dict().items()}
    load_gguf_into(model, path, wide_model)
    stock = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name, dtype=torch.float32).state_dict()
    mine = model.state_dict()
    for name, value in mine.items():
        assert torch.equal(value, stock[name]), name
        error = (value - source[name]).norm() / source[name].norm()
        assert error < 0.1, (name, float(error))

    # the playground loads an artifact directory as load_artifact does, and answers from it
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        if (wide_model / name).exists():
            shutil.copy2(wide_model / name, out / name)
    loaded, tokenizer = load_artifact(out)
    [reply] = generate_replies(loaded, tokenizer, ["Say the colour of the sky."], max_new_tokens=4)
    assert len(reply) > 0


def _next_token_kl(model_dir, gguf_path, source_log_probs, ids) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    load_gguf_into(model, gguf_path, model_dir)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits, dim=-1)
    return float((source_log_probs.exp() * (source_log_probs - log_probs)).sum(-1).mean())


@pytest.mark.slow  # four exports of a 12.6M-entry embedding, each read back
def test_more_bits_keep_the_source_models_next_tokens_closer(wide_model, tmp_path):
    """Measured on this model (KL of the next-token distributions, nats): q8_0 0.002, q6_k 0.016,
    q5_k_m 0.038, q4_k_m 0.158, q4_0 0.198 (a random model's flat logits make top-1 agreement noisy)."""
    tokenizer = AutoTokenizer.from_pretrained(wide_model)
    ids = tokenizer(["Explain in two sentences what a neural network is. Write a short, friendly email."],
                    return_tensors="pt").input_ids
    with torch.no_grad():
        source = torch.log_softmax(AutoModelForCausalLM.from_pretrained(wide_model)(ids).logits, dim=-1)
    kl = {kind: _next_token_kl(wide_model, export_gguf(wide_model, tmp_path / f"{kind}.gguf", gguf_type=kind),
                               source, ids)
          for kind in ("q6_k", "q5_k_m", "q4_k_m", "q4_0")}
    assert kl["q6_k"] < kl["q5_k_m"] < kl["q4_k_m"] < kl["q4_0"], kl
    assert kl["q6_k"] < 0.05, kl


def test_a_k_quant_job_reports_its_agreement(wide_model, tmp_path):
    config = QuantizeConfig.from_dict({"scheme": "gguf_q5_k_m", "source_path": str(wide_model),
                                       "output_dir": str(tmp_path / "out"), "max_new_tokens": 8})
    report = run_quantize(config, MemorySink()).report
    assert report["agreement_kl"] < 0.1 and report["agreement_top1"] > 0.5, report  # measured 0.04 and 0.67
    assert report["size_bytes_after"] < report["size_bytes_before"] / 4
    assert json.loads((tmp_path / "out" / "config.json").read_text())["hidden_size"] == 256
