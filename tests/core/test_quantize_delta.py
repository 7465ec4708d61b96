"""Delta-compression schemes (ComPEFT, Delta-CoMe): the papers' formulas on
small tensors, and on the tiny model a LoRA adapter and a full fine-tune
compressed into outputs that stock peft/transformers load, whose packed
change unpacks to what loads, with the report's sizes and eval change;
ComPEFT's α search writes the α with the lowest validation loss, and the
presets are valid settings that say what they trade."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tuning.data.tasks import collate_for_task, load_task_data
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.models import load_tokenizer
from tuning.quantize import QUANT_SCHEMES, compeft, delta_come, describe
from tuning.quantize.config import QuantizeConfig
from tuning.quantize.delta import PACKED_FILE, STATS_FILE, pack_bits, unpack_bits
from tuning.quantize.run import check_quantize_source, run_quantize
from tests.core.test_quantize import ROWS, _train

DELTA_SCHEMES = [name for name, scheme in QUANT_SCHEMES.items() if scheme.delta]
UNPACK = {"compeft": compeft.unpack_delta, "delta_come": delta_come.unpack_delta}
# Settings that keep a tiny 8-step adapter's behaviour: at ComPEFT's density 0.1 both LoRA factors lose most of
# what 8 steps taught them (KL to the adapter 0.23 vs the base's 0.24); at 0.5 it is 0.09 (measured on this adapter)
KEEPING = {"compeft": {"density": 0.5, "alpha": 1.0}, "delta_come": {}}


@pytest.fixture(scope="module")
def rows_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


@pytest.fixture(scope="module")
def lora_adapter(tiny_model, rows_jsonl, tmp_path_factory) -> Path:
    return Path(_train(tiny_model, rows_jsonl, tmp_path_factory.mktemp("lora"), max_steps=8,
                       method_params={"rank": 8, "alpha": 16, "dropout": 0.0}).output_path)


@pytest.fixture(scope="module")
def full_finetune(tiny_model, rows_jsonl, tmp_path_factory) -> Path:
    return Path(_train(tiny_model, rows_jsonl, tmp_path_factory.mktemp("full"), max_steps=8, method="full",
                       learning_rate=0.001).output_path)


def _config(source, base, out, data, scheme, **overrides) -> QuantizeConfig:
    return QuantizeConfig.from_dict({
        "scheme": scheme, "source_path": str(source), "base_model": str(base), "output_dir": str(out),
        "eval_dataset_path": str(data), "eval_rows": 4, "prompts": ["Say the colour of the sky."], **overrides})


def test_compeft_formula_on_a_small_tensor():
    tau = torch.tensor([[0.5, -2.0, 0.1, 0.0], [-0.3, 1.0, -4.0, 0.2]])
    compressed, mask, scale = compeft.compeft(tau, density=0.25, alpha=2.0)
    # the two largest magnitudes (-4.0, -2.0) survive as sign x alpha x population std of the whole tensor
    std = math.sqrt(sum((v - tau.mean().item()) ** 2 for v in tau.flatten().tolist()) / 8)
    assert scale == pytest.approx(2.0 * std)
    expected = torch.zeros(2, 4)
    expected[0, 1], expected[1, 2] = -scale, -scale
    assert torch.equal(mask, expected != 0) and torch.allclose(compressed, expected)
    # density 1 keeps every entry, a zero entry keeps sign 0
    full, _, scale_all = compeft.compeft(tau, density=1.0, alpha=1.0)
    assert torch.allclose(full, torch.sign(tau) * scale_all)


def test_bit_packing_round_trips_any_width():
    generator = torch.Generator().manual_seed(0)
    for bits in (1, 2, 3, 5, 8):
        codes = torch.randint(0, 2 ** bits, (1001,), generator=generator)
        packed = pack_bits(codes, bits)
        assert packed.numel() == math.ceil(1001 * bits / 8)
        assert torch.equal(unpack_bits(packed, bits, 1001), codes)


def test_scheme_settings_are_checked_by_name(tmp_path):
    with pytest.raises(ConfigError) as caught:
        QuantizeConfig.from_dict({"scheme": "compeft", "source_path": "x", "output_dir": "y",
                                  "scheme_params": {"density": 1.5, "alpha": 0, "topk": 3}})
    assert set(caught.value.errors) == {"scheme_params.density", "scheme_params.alpha", "scheme_params.topk"}
    assert "at most 1" in caught.value.errors["scheme_params.density"]
    config = QuantizeConfig.from_dict({"scheme": "compeft", "source_path": "x", "output_dir": "y"})
    assert config.scheme_params == {"density": 0.1, "alpha": 1.0, "alpha_grid": ""}
    with pytest.raises(ConfigError, match="unknown setting"):
        QuantizeConfig.from_dict({"scheme": "gguf_q8_0", "source_path": "x", "output_dir": "y",
                                  "scheme_params": {"density": 0.5}})
    row = describe("compeft", check_machine=False)
    assert row["delta"] and "https://arxiv.org/abs/" in row["paper"] and row["params"]["density"] == 0.1


def test_a_delta_scheme_needs_a_local_base_that_the_source_was_tuned_from(lora_adapter, tiny_model, tmp_path,
                                                                          rows_jsonl):
    with pytest.raises(ConfigError) as caught:
        check_quantize_source(_config(tiny_model, "", tmp_path / "out", rows_jsonl, "compeft"))
    assert "base model" in caught.value.errors["base_model"]
    with pytest.raises(ConfigError) as caught:
        check_quantize_source(_config(tiny_model, "some-org/some-model", tmp_path / "out", rows_jsonl, "compeft"))
    assert "local model directory" in caught.value.errors["base_model"]

    other = tmp_path / "other"  # a model of another shape is no base of the tiny model
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(other)
    with pytest.raises(ConfigError) as caught:
        check_quantize_source(_config(tiny_model, other, tmp_path / "out", rows_jsonl, "compeft"))
    assert "not a fine-tune of" in caught.value.errors["base_model"]
    check_quantize_source(_config(lora_adapter, tiny_model, tmp_path / "out", rows_jsonl, "compeft"))


def _log_probs(model, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    ids = tokenizer(["Say the colour of the sky. Blue.", "Count to three. One, two, three."], return_tensors="pt",
                    padding=True).input_ids
    with torch.no_grad():
        return torch.log_softmax(model(ids).logits.float(), dim=-1)


def _kl(reference, other) -> float:
    return (reference.exp() * (reference - other)).sum(-1).mean().item()


@pytest.mark.parametrize("scheme", DELTA_SCHEMES)
def test_an_adapter_compresses_into_an_adapter_that_peft_loads(scheme, lora_adapter, tiny_model, rows_jsonl,
                                                                tmp_path):
    from peft import PeftModel

    sink = MemorySink()
    result = run_quantize(_config(lora_adapter, tiny_model, tmp_path / "out", rows_jsonl, scheme,
                                  scheme_params=KEEPING[scheme]), sink)
    out = Path(result.output_path)
    assert result.status == "succeeded"
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    [artifact] = sink.of_kind("artifact")
    assert artifact.artifact_kind == "adapter"  # the studio loads it on its base, like any adapter

    report = result.report
    stats = json.loads((out / STATS_FILE).read_text())
    assert report["compression"] == stats and stats["source_kind"] == "adapter"
    assert report["size_bytes_before"] == (lora_adapter / "adapter_model.safetensors").stat().st_size
    # the tiny adapter's 9k entries pack into ~2 KB; the file's header (names, shapes) is most of the rest
    assert report["size_bytes_after"] == (out / PACKED_FILE).stat().st_size < report["size_bytes_before"] / 2
    for key in ("perplexity_before", "perplexity_after", "agreement_top1", "agreement_kl"):
        assert report[key] is not None, key

    # the packed change unpacks to exactly the adapter's tensors
    written = load_file(out / "adapter_model.safetensors")
    unpacked = UNPACK[scheme](out / PACKED_FILE)
    assert set(unpacked) == set(written)
    for name, tensor in written.items():
        assert torch.allclose(unpacked[name], tensor.float(), atol=1e-6), name

    # stock peft on the base: the compressed adapter keeps much of what the adapter changed
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    plain = _log_probs(base, tiny_model)
    original = _log_probs(PeftModel.from_pretrained(base, lora_adapter), tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    compressed = _log_probs(PeftModel.from_pretrained(base, out), tiny_model)
    assert _kl(original, compressed) < 0.6 * _kl(original, plain)


@pytest.mark.parametrize("scheme", DELTA_SCHEMES)
def test_a_full_finetune_compresses_into_a_model_that_transformers_loads(scheme, full_finetune, tiny_model,
                                                                          rows_jsonl, tmp_path):
    result = run_quantize(_config(full_finetune, tiny_model, tmp_path / "out", rows_jsonl, scheme,
                                  report_agreement=False), MemorySink())
    out = Path(result.output_path)
    report = result.report
    assert report["compression"]["source_kind"] == "model"
    assert report["size_bytes_after"] < report["size_bytes_before"] / 4
    assert report["perplexity_after"] > 0 and "agreement_top1" not in report

    reloaded = load_file(out / "model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    unpacked = UNPACK[scheme](out / PACKED_FILE)
    for name, tensor in reloaded.items():
        assert torch.allclose(base[name] + unpacked[name], tensor, atol=1e-5), name
    # stock transformers, nothing else: closer to the fine-tune than the base is
    tuned = _log_probs(AutoModelForCausalLM.from_pretrained(full_finetune), tiny_model)
    plain = _log_probs(AutoModelForCausalLM.from_pretrained(tiny_model), tiny_model)
    compressed = _log_probs(AutoModelForCausalLM.from_pretrained(out), tiny_model)
    assert _kl(tuned, compressed) < 0.6 * _kl(tuned, plain)


def test_delta_come_formula_on_a_small_matrix():
    generator = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(12, 6, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(10, 6, generator=generator))
    singular = torch.tensor([8.0, 4.0, 1.0, 0.5, 0.25, 0.125])
    delta = u @ torch.diag(singular) @ v.T
    groups = delta_come.groups_for({"rank_8bit": 1, "rank_3bit": 2, "rank_2bit": 1}, 6)
    assert groups == [(8, 1), (3, 2), (2, 1)]  # the two smallest singular vectors are dropped
    us, v_q, parts = delta_come.delta_come(delta, groups)
    assert us.shape == (12, 4) and v_q.shape == (10, 4)
    assert torch.allclose(parts[".s"].float(), singular[:4], rtol=1e-3)

    # by hand: each kept singular vector on its own symmetric grid of 2^(b-1) - 1 levels a side
    svd_u, svd_s, svd_vh = torch.linalg.svd(delta.double(), full_matrices=False)
    expected = torch.zeros(12, 10, dtype=torch.float64)
    for index, bits in enumerate([8, 3, 3, 2]):
        top = 2 ** (bits - 1) - 1
        rounded = []
        for vector in (svd_u[:, index], svd_vh[index]):
            scale = float(torch.tensor(vector.abs().max().item() / top, dtype=torch.float16))
            rounded.append(torch.clamp(torch.round(vector / scale), -top, top) * scale)
        singular_value = float(torch.tensor(svd_s[index].item(), dtype=torch.float16))
        expected += singular_value * torch.outer(rounded[0], rounded[1])
    assert torch.allclose(us @ v_q.T, expected.float(), atol=1e-4)
    # more bits where the singular values are large: the top pair at 8 bits is nearly exact
    top_pair = svd_s[0] * torch.outer(svd_u[:, 0], svd_vh[0])
    first = us[:, :1] @ v_q[:, :1].T
    assert (first - top_pair.float()).abs().max() < 0.01 * top_pair.abs().max()
    assert (us @ v_q.T - delta).norm() < 0.25 * delta.norm()


# ---- ComPEFT's α search and the presets ----------------------------------------

GRID = [0.5, 2.0, 8.0]


def validation_loss(model, data: Path, tokenizer_dir) -> float:
    """The loss of all four rows in one batch (the search's batch), computed here without the search's code."""
    tokenizer = load_tokenizer(str(tokenizer_dir))
    items = load_task_data("sft", str(data), tokenizer=tokenizer, max_length=256).items
    batch = collate_for_task("sft", pad_token_id=tokenizer.pad_token_id)(items)
    with torch.no_grad():
        return float(model.float().eval()(**batch).loss)


def test_the_search_writes_the_alpha_with_the_lowest_validation_loss(full_finetune, tiny_model,
                                                                      rows_jsonl, tmp_path):
    searched = run_quantize(_config(full_finetune, tiny_model, tmp_path / "searched", rows_jsonl, "compeft",
                                    validation_dataset_path=str(rows_jsonl), report_agreement=False,
                                    scheme_params={"density": 0.5, "alpha_grid": "0.5, 2, 8"}), MemorySink())
    search = searched.report["compression"]["alpha_search"]
    assert search["grid"] == GRID and search["rows"] == 4 and search["validation"] == rows_jsonl.name
    losses = search["losses"]
    assert search["chosen"] == GRID[losses.index(min(losses))]
    assert searched.report["compression"]["settings"]["alpha"] == search["chosen"]
    assert max(losses) - min(losses) > 0.01  # the candidates differ: the choice means something

    measured = []
    for alpha in GRID:  # each α written without a search and reloaded as a user loads it
        out = run_quantize(_config(full_finetune, tiny_model, tmp_path / f"alpha-{alpha}", rows_jsonl, "compeft",
                                   report=False, scheme_params={"density": 0.5, "alpha": alpha}), MemorySink())
        measured.append(validation_loss(compeft.load(Path(out.output_path)), rows_jsonl, full_finetune))
    assert measured == pytest.approx(losses, rel=1e-4)


def test_the_search_scores_an_adapter_as_peft_loads_it(lora_adapter, tiny_model, rows_jsonl, tmp_path):
    searched = run_quantize(_config(lora_adapter, tiny_model, tmp_path / "searched", rows_jsonl, "compeft",
                                    validation_dataset_path=str(rows_jsonl), report=False,
                                    scheme_params={"density": 0.5, "alpha_grid": [1, 3]}), MemorySink())
    stats = (Path(searched.output_path) / "delta_compression.json").read_text()
    fixed = run_quantize(_config(lora_adapter, tiny_model, tmp_path / "fixed", rows_jsonl, "compeft", report=False,
                                 scheme_params={"density": 0.5, "alpha": 3}), MemorySink())
    search = json.loads(stats)["alpha_search"]
    assert search["grid"] == [1.0, 3.0]
    assert validation_loss(compeft.load(Path(fixed.output_path)), rows_jsonl, tiny_model) == pytest.approx(
        search["losses"][1], rel=1e-4)


def test_a_search_needs_a_validation_split_and_a_grid_of_positive_numbers():
    base = {"scheme": "compeft", "source_path": "x", "output_dir": "y"}
    with pytest.raises(ConfigError) as caught:
        QuantizeConfig.from_dict({**base, "scheme_params": {"alpha_grid": "0.5, 1"}})
    assert set(caught.value.errors) == {"validation_dataset_path"}
    with pytest.raises(ConfigError) as caught:
        QuantizeConfig.from_dict({**base, "validation_dataset_path": "v.jsonl",
                                  "scheme_params": {"alpha_grid": "0.5, lots"}})
    assert set(caught.value.errors) == {"scheme_params.alpha_grid"}
    config = QuantizeConfig.from_dict({**base, "validation_dataset_path": "v.jsonl",
                                       "scheme_params": {"alpha_grid": [4, 0.5, 4]}})
    assert config.scheme_params["alpha_grid"] == "4, 0.5"


@pytest.mark.parametrize("scheme", ["compeft", "delta_come"])
def test_each_preset_is_valid_and_says_what_it_trades(scheme):
    row = describe(scheme, check_machine=False)
    assert len(row["presets"]) >= 3
    for preset in row["presets"].values():
        assert len(preset["trade"]) > 20
        assert QUANT_SCHEMES[scheme].check_params(preset["settings"])  # raises on a bad setting


def test_the_cli_lists_each_schemes_presets_with_what_they_trade(capsys):
    from tuning.__main__ import main

    assert main(["quantize-schemes"]) == 0
    listing = capsys.readouterr().out
    assert "preset search α: as balanced, but α is picked" in listing and "preset paper budget: about" in listing
