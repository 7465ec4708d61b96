"""run_merge end to end on the tiny model: two LoRA adapters trained for real
on different data, folded, combined and merged; every output reloads in
stock transformers/peft; bad sources are refused by name; a cancel leaves
nothing behind. aTLAS learns coefficients for a LoRA that knows the data and
a model of random noise: they move, and the saved model's loss on the data
is below task arithmetic's; zero steps are task arithmetic bit for bit."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuning.config import TrainConfig
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.merge import MERGE_METHODS, check_merge_sources, run_merge
from tuning.merge.config import MergeConfig
from tuning.train import run_train

PROBE = torch.tensor([[1, 400, 2000, 77, 5, 901]])
TENSOR = "model.layers.0.mlp.up_proj.weight"
DATA = {
    "colours": [{"instruction": "Say the colour of the sky.", "output": "Blue."},
                {"instruction": "Say the colour of grass.", "output": "Green."}],
    "counting": [{"instruction": "Count to three.", "output": "One, two, three."},
                 {"instruction": "Greet me.", "output": "Hello!"}],
}


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for name, rows in DATA.items():
        data = root / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows * 2))
        config = TrainConfig.from_dict({
            "base_model": str(tiny_model), "dataset_path": str(data), "output_dir": str(root / name),
            "max_steps": 6, "batch_size": 4, "learning_rate": 0.02, "warmup_ratio": 0.0, "precision": "fp32",
            "method_params": {"rank": 4, "alpha": 8, "dropout": 0.0}})
        out[name] = Path(run_train(config, MemorySink()).output_path)
    return out


def merge(tiny_model, out, method, sources, **settings):
    config = MergeConfig.from_dict({"method": method, "base_model": str(tiny_model), "output_dir": str(out),
                                    "sources": [str(s) if isinstance(s, Path) else s for s in sources], **settings})
    sink = MemorySink()
    return run_merge(config, sink), sink


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(PROBE).logits


def load(path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def peft_logits(tiny_model, adapter) -> torch.Tensor:
    from peft import PeftModel

    return logits(PeftModel.from_pretrained(load(tiny_model), adapter))


@pytest.fixture(scope="module")
def folded(tiny_model, adapters, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("folded")
    return {name: Path(merge(tiny_model, root / name, "fold", [adapter])[0].output_path)
            for name, adapter in adapters.items()}


def test_fold_gives_a_stock_model_with_the_adapter_logits(tiny_model, adapters, folded):
    model_dir = folded["colours"]
    torch.testing.assert_close(logits(load(model_dir)), peft_logits(tiny_model, adapters["colours"]),
                               rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits(load(model_dir)), logits(load(tiny_model)), atol=1e-4)
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert "Fold adapter into base" in (model_dir / "README.md").read_text()


def test_fold_reports_progress_and_the_artifact(tiny_model, adapters, tmp_path):
    result, sink = merge(tiny_model, tmp_path, "fold", [adapters["counting"]], dtype="bf16")
    progress = sink.of_kind("progress")
    assert 1 <= len(progress) <= 22 and progress[-1].done == progress[-1].total
    artifact = sink.of_kind("artifact")[-1]
    assert artifact.artifact_kind == "model" and artifact.path == result.output_path
    assert artifact.metadata["method"] == "fold" and artifact.metadata["size_bytes"] > 0
    assert artifact.metadata["sources"][0]["path"] == str(adapters["counting"])
    assert load(result.output_path).dtype == torch.float32  # loads; the stored weights are bf16
    assert next(iter(load_file(Path(result.output_path) / "model.safetensors").values())).dtype == torch.bfloat16


ADAPTER_METHODS = [name for name, m in MERGE_METHODS.items() if m.group == "adapters"]
MODEL_METHODS = [name for name, m in MERGE_METHODS.items() if m.group == "models" and not m.needs_dataset]


@pytest.mark.parametrize("method", ADAPTER_METHODS)
def test_combined_adapters_reload_in_stock_peft(tiny_model, adapters, tmp_path, method):
    from peft import PeftModel

    sources = [{"path": str(adapters["colours"]), "weight": 0.6}, {"path": str(adapters["counting"]), "weight": 0.4}]
    result, sink = merge(tiny_model, tmp_path, method, sources[:MERGE_METHODS[method].max_sources])
    assert result.status == "succeeded" and sink.of_kind("artifact")[-1].artifact_kind == "adapter"
    assert (Path(result.output_path) / "adapter_model.safetensors").exists()
    combined = PeftModel.from_pretrained(load(tiny_model), result.output_path)
    out = logits(combined)
    assert torch.isfinite(out).all() and not torch.allclose(out, logits(load(tiny_model)), atol=1e-4)
    if method == "lora_cat":  # exact: the folded combination is base + 0.6 ΔW1 + 0.4 ΔW2
        weight = combined.merge_and_unload().state_dict()[TENSOR]
        base = load_file(tiny_model / "model.safetensors")[TENSOR]
        expected = base + 0.6 * (_folded_tensor(tiny_model, adapters["colours"]) - base) + \
            0.4 * (_folded_tensor(tiny_model, adapters["counting"]) - base)
        torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-6)


def _folded_tensor(tiny_model, adapter) -> torch.Tensor:
    from peft import PeftModel

    return PeftModel.from_pretrained(load(tiny_model), adapter).merge_and_unload().state_dict()[TENSOR]


@pytest.mark.parametrize("method", MODEL_METHODS)
def test_every_model_merge_runs_and_reloads_in_stock_transformers(tiny_model, folded, tmp_path, method):
    result, sink = merge(tiny_model, tmp_path, method, list(folded.values())[:MERGE_METHODS[method].max_sources])
    assert result.status == "succeeded" and sink.of_kind("artifact")[-1].artifact_kind == "model"
    out = logits(load(result.output_path))
    assert torch.isfinite(out).all() and not torch.allclose(out, logits(load(tiny_model)), atol=1e-4)
    assert f"- {method}" in (Path(result.output_path) / "README.md").read_text()


def test_task_arithmetic_of_folded_models_follows_the_formula(tiny_model, folded, tmp_path):
    result, sink = merge(tiny_model, tmp_path, "task_arithmetic",
                         [{"path": str(folded["colours"]), "weight": 1.0},
                          {"path": str(folded["counting"]), "weight": 0.5}], method_params={"scaling": 0.8})
    merged = load(result.output_path).state_dict()[TENSOR]
    base = load_file(tiny_model / "model.safetensors")[TENSOR]
    a, b = (load_file(folded[name] / "model.safetensors")[TENSOR] for name in ("colours", "counting"))
    torch.testing.assert_close(merged, base + 0.8 * ((a - base) + 0.5 * (b - base)))
    progress = sink.of_kind("progress")
    assert len(progress) <= 22 and progress[-1].done == progress[-1].total == len(load_file(
        tiny_model / "model.safetensors"))


def test_adapter_sources_are_folded_on_the_fly(tiny_model, adapters, folded, tmp_path):
    """A LoRA source is folded per tensor: the same merge as on the peft-folded models."""
    from_adapters, _ = merge(tiny_model, tmp_path / "a", "ties", list(adapters.values()))
    from_models, _ = merge(tiny_model, tmp_path / "m", "ties", list(folded.values()))
    torch.testing.assert_close(logits(load(from_adapters.output_path)), logits(load(from_models.output_path)),
                               rtol=1e-5, atol=1e-5)


def test_a_non_lora_adapter_source_is_folded_by_peft(tiny_model, memorisable_jsonl, tmp_path):
    config = TrainConfig.from_dict({
        "base_model": str(tiny_model), "dataset_path": str(memorisable_jsonl), "output_dir": str(tmp_path / "ia3"),
        "max_steps": 3, "batch_size": 4, "learning_rate": 0.05, "precision": "fp32", "method": "ia3"})
    adapter = Path(run_train(config, MemorySink()).output_path)
    result, sink = merge(tiny_model, tmp_path / "merged", "task_arithmetic", [adapter])
    assert any("with peft first" in event.message for event in sink.of_kind("log"))
    torch.testing.assert_close(logits(load(result.output_path)), peft_logits(tiny_model, adapter),
                               rtol=1e-5, atol=1e-5)


def test_ties_and_slerp_outputs_reload(tiny_model, folded, tmp_path):
    a, b = (load_file(folded[name] / "model.safetensors")[TENSOR] for name in ("colours", "counting"))
    ties_result, _ = merge(tiny_model, tmp_path / "ties", "ties", list(folded.values()),
                           method_params={"density": 1.0})
    base = load_file(tiny_model / "model.safetensors")[TENSOR]
    merged = load(ties_result.output_path).state_dict()[TENSOR] - base
    da, db = a - base, b - base
    agree = torch.sign(da) == torch.sign(db)
    torch.testing.assert_close(merged[agree], ((da + db) / 2)[agree])  # agreeing entries: the plain mean
    slerp_result, _ = merge(tiny_model, tmp_path / "slerp", "slerp", list(folded.values()),
                            method_params={"t": 1.0})
    torch.testing.assert_close(logits(load(slerp_result.output_path)), logits(load(folded["counting"])))


def test_fisher_merge_runs_on_a_dataset(tiny_model, adapters, tmp_path, memorisable_jsonl):
    result, sink = merge(tiny_model, tmp_path, "fisher", list(adapters.values()),
                         dataset_path=str(memorisable_jsonl), fisher_batches=3)
    assert result.status == "succeeded" and result.metadata["fisher_rows"] == 3
    phases = {event.phase for event in sink.of_kind("progress")}
    assert phases == {"Estimating Fisher information", "Merging tensors"}
    assert torch.isfinite(logits(load(result.output_path))).all()
    assert not (tmp_path / "merge-work").exists()


def _copy_model(tiny_model, dest: Path) -> Path:
    shutil.copytree(tiny_model, dest)
    return dest


def test_a_different_hidden_size_is_refused(tiny_model, tmp_path):
    other = _copy_model(tiny_model, tmp_path / "wide")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    with pytest.raises(ConfigError, match="hidden_size is 64 in .*wide but 32"):
        check_merge_sources(_config(tiny_model, tmp_path, [other]))


def test_a_tensor_of_another_shape_is_refused_by_name(tiny_model, tmp_path):
    other = _copy_model(tiny_model, tmp_path / "resized")
    weights = load_file(other / "model.safetensors")
    weights[TENSOR] = torch.zeros(128, 32)
    save_file(weights, str(other / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=rf"{TENSOR} has shape \(128, 32\) in .*resized but \(64, 32\)"):
        check_merge_sources(_config(tiny_model, tmp_path, [other]))


def test_a_tokenizer_with_another_vocabulary_is_refused_by_token(tiny_model, tmp_path):
    other = _copy_model(tiny_model, tmp_path / "more-tokens")
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<merge-test-token>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ConfigError, match="<merge-test-token>"):
        check_merge_sources(_config(tiny_model, tmp_path, [other]))
    check_merge_sources(_config(tiny_model, tmp_path, [tiny_model]))  # the same model passes


def test_adapters_of_different_ranks_need_cat_or_svd(tiny_model, adapters, tmp_path):
    other = tmp_path / "rank8"
    shutil.copytree(adapters["counting"], other)
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "r": 8}))
    sources = [adapters["colours"], other]
    with pytest.raises(ConfigError, match="rank 8 .* rank 4"):
        check_merge_sources(_config(tiny_model, tmp_path, sources, method="lora_ties"))


def _config(tiny_model, tmp_path, sources, method="task_arithmetic") -> MergeConfig:
    return MergeConfig.from_dict({"method": method, "base_model": str(tiny_model), "output_dir": str(tmp_path / "out"),
                                  "sources": [str(s) for s in sources]})


class StopSink(MemorySink):
    def should_stop(self) -> bool:
        return True


@pytest.mark.parametrize("method", ["ties", "fold"])
def test_cancel_removes_the_partial_output(tiny_model, adapters, tmp_path, method):
    sources = [adapters["colours"]] if method == "fold" else list(adapters.values())
    config = MergeConfig.from_dict({"method": method, "base_model": str(tiny_model), "output_dir": str(tmp_path),
                                    "sources": [str(s) for s in sources]})
    sink = StopSink()
    result = run_merge(config, sink)
    assert result.status == "cancelled" and result.output_path == ""
    assert list(tmp_path.iterdir()) == [] and not sink.of_kind("artifact")


def test_a_damaged_safetensors_header_is_a_clear_error_not_an_exabyte_read(tmp_path):
    from tuning.errors import ModelError
    from tuning.merge.tensors import read_header

    damaged = tmp_path / "adapter_model.safetensors"
    damaged.write_bytes(b"w" * 3000)  # the first 8 bytes claim a header of 8.6e18 bytes
    with pytest.raises(ModelError, match="damaged"):
        read_header(damaged)


def test_wise_ft_of_an_adapter_is_the_adapter_scaled_and_equals_the_folded_interpolation(tiny_model, adapters,
                                                                                         tmp_path):
    from peft import PeftModel

    adapter = adapters["colours"]
    scaled, _ = merge(tiny_model, tmp_path / "adapter", "lora_wise_ft", [adapter], method_params={"alpha": 0.3})
    folded, _ = merge(tiny_model, tmp_path / "model", "wise_ft", [adapter], method_params={"alpha": 0.3})
    base = load_file(tiny_model / "model.safetensors")[TENSOR]
    expected = base + 0.3 * (_folded_tensor(tiny_model, adapter) - base)
    weight = PeftModel.from_pretrained(load(tiny_model), scaled.output_path).merge_and_unload().state_dict()[TENSOR]
    torch.testing.assert_close(weight, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(load(folded.output_path).state_dict()[TENSOR], expected, rtol=1e-5, atol=1e-6)
    assert scaled.metadata["scaled_matrices"] > 0


def test_wise_ft_refuses_an_adapter_it_cannot_scale_before_queueing(tiny_model, adapters, tmp_path):
    dora = tmp_path / "dora"
    shutil.copytree(adapters["colours"], dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ConfigError, match=r"is DoRA.*use WiSE-FT \(models\)") as caught:
        check_merge_sources(_config(tiny_model, tmp_path, [dora], method="lora_wise_ft"))
    assert set(caught.value.errors) == {"sources.0"}


# ---- aTLAS ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def noise_model(tiny_model, tmp_path_factory) -> Path:
    """A "fine-tune" that is the base plus random noise: a task vector that only hurts."""
    noise = tmp_path_factory.mktemp("noise") / "model"
    shutil.copytree(tiny_model, noise)
    generator = torch.Generator().manual_seed(0)
    weights = {name: tensor + 0.1 * torch.randn(tensor.shape, generator=generator)
               for name, tensor in load_file(tiny_model / "model.safetensors").items()}
    save_file(weights, str(noise / "model.safetensors"), metadata={"format": "pt"})
    return noise


@pytest.fixture(scope="module")
def colours_jsonl(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("atlas-data") / "colours.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in DATA["colours"] * 2))
    return path


def data_loss(model_dir, tiny_model, data) -> float:
    """The mean loss on all rows in one batch, by a model loaded as a user would."""
    from tuning.data.tasks import collate_for_task, load_task_data
    from tuning.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    items = load_task_data("sft", str(data), tokenizer=tokenizer, max_length=512).items
    with torch.no_grad():
        return float(load(model_dir).eval()(**collate_for_task("sft", pad_token_id=tokenizer.pad_token_id)(items)).loss)


def test_atlas_learns_coefficients_that_lower_the_loss_below_task_arithmetic(tiny_model, adapters, noise_model,
                                                                             colours_jsonl, tmp_path):
    sources = [adapters["colours"], noise_model]
    atlas, _ = merge(tiny_model, tmp_path / "atlas", "atlas", sources, dataset_path=str(colours_jsonl),
                     method_params={"steps": 8, "learning_rate": 0.1, "rows": 4, "batch_size": 4})
    plain, _ = merge(tiny_model, tmp_path / "ta", "task_arithmetic", sources)
    report = atlas.metadata["atlas"]
    assert report["steps"] == 8 and report["rows"] == 4 and report["loss_end"] < report["loss_start"]
    rows = {row["block"]: row["per_source"] for row in report["coefficients"]}
    assert len(rows) == len(load_file(tiny_model / "model.safetensors"))  # one per tensor (tied head: one)
    assert all(c["start"] == 1.0 for per_source in rows.values() for c in per_source)
    assert sum(abs(c["learned"] - c["start"]) > 0.05 for per_source in rows.values() for c in per_source) > 10
    noise = [per_source[1]["learned"] for per_source in rows.values()]
    assert sum(noise) / len(noise) < 1.0  # the noise task vector is turned down on average

    learned_loss, plain_loss = (data_loss(r.output_path, tiny_model, colours_jsonl) for r in (atlas, plain))
    assert learned_loss < plain_loss
    assert learned_loss == pytest.approx(report["loss_end"], rel=1e-4)
    assert plain_loss == pytest.approx(report["loss_start"], rel=1e-4)

    # The saved tensor is θ_base + Σ_i c_i τ_i with the reported coefficients (λ included).
    base = load_file(tiny_model / "model.safetensors")[TENSOR]
    lora_delta = _folded_tensor(tiny_model, adapters["colours"]) - base
    noise_delta = load_file(noise_model / "model.safetensors")[TENSOR] - base
    lora_c, noise_c = (c["learned"] for c in rows[TENSOR])
    torch.testing.assert_close(load(atlas.output_path).state_dict()[TENSOR],
                               base + lora_c * lora_delta + noise_c * noise_delta, rtol=1e-5, atol=1e-5)


def test_atlas_with_zero_steps_is_task_arithmetic_exactly(tiny_model, adapters, noise_model, colours_jsonl,
                                                          tmp_path):
    sources = [{"path": str(adapters["colours"]), "weight": 0.7}, {"path": str(noise_model), "weight": 0.3}]
    atlas, _ = merge(tiny_model, tmp_path / "a", "atlas", sources, dataset_path=str(colours_jsonl),
                     method_params={"steps": 0, "scaling": 0.8, "blocks": "layer"})
    plain, _ = merge(tiny_model, tmp_path / "t", "task_arithmetic", sources, method_params={"scaling": 0.8})
    ours, theirs = (load_file(Path(r.output_path) / "model.safetensors") for r in (atlas, plain))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)
    report = atlas.metadata["atlas"]
    assert report["loss_start"] == report["loss_end"]
    assert [row["block"] for row in report["coefficients"]] == ["model.embed_tokens.weight", "model.layers.0",
                                                                "model.layers.1", "model.norm.weight"]


def test_atlas_refuses_bad_input_naming_the_field(tiny_model, adapters, colours_jsonl, tmp_path):
    config = {"method": "atlas", "base_model": str(tiny_model), "output_dir": str(tmp_path / "out"),
              "sources": [str(adapters["colours"])]}
    with pytest.raises(ConfigError) as caught:
        MergeConfig.from_dict(config)
    assert caught.value.errors == {"dataset_path": "aTLAS (learned coefficients) learns its coefficients on data: "
                                                   "pick a dataset"}
    with pytest.raises(ConfigError) as caught:
        MergeConfig.from_dict({**config, "dataset_path": str(colours_jsonl), "method_params": {"scaling": 0.0}})
    assert "no gradient" in caught.value.errors["method_params.scaling"]
    other_base = _copy_model(tiny_model, tmp_path / "other-base")
    with pytest.raises(ConfigError) as caught:
        check_merge_sources(MergeConfig.from_dict({**config, "dataset_path": str(colours_jsonl), "sources": [
            {"path": str(adapters["colours"]), "base": str(other_base)}]}))
    assert set(caught.value.errors) == {"sources.0.base"}
    assert "was trained on" in caught.value.errors["sources.0.base"]
