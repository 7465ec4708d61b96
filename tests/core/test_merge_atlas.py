"""aTLAS on the tiny model: a LoRA trained on the data and a full model of
random noise are merged with coefficients learned on that data. Learning
moves the coefficients and the saved model (reloaded in stock
transformers) has a lower loss on the data than task arithmetic with the
starting coefficients; zero steps are task arithmetic bit for bit; bad
input is refused naming the field."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from tuning.config import TrainConfig
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.merge import check_merge_sources, run_merge
from tuning.merge.config import MergeConfig
from tuning.train import run_train

TENSOR = "model.layers.0.mlp.up_proj.weight"
ROWS = [{"instruction": "Say the colour of the sky.", "output": "Blue."},
        {"instruction": "Say the colour of grass.", "output": "Green."},
        {"instruction": "Count to three.", "output": "One, two, three."},
        {"instruction": "Greet me.", "output": "Hello!"}]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("atlas-data") / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


@pytest.fixture(scope="module")
def sources(tiny_model, data, tmp_path_factory) -> list[Path]:
    """A LoRA adapter that learned the rows, and a "fine-tune" that is the base plus noise."""
    root = tmp_path_factory.mktemp("atlas-sources")
    config = TrainConfig.from_dict({
        "base_model": str(tiny_model), "dataset_path": str(data), "output_dir": str(root / "lora"), "max_steps": 6,
        "batch_size": 4, "learning_rate": 0.02, "warmup_ratio": 0.0, "precision": "fp32",
        "method_params": {"rank": 4, "alpha": 8, "dropout": 0.0}})
    adapter = Path(run_train(config, MemorySink()).output_path)
    noise = root / "noise"
    shutil.copytree(tiny_model, noise)
    generator = torch.Generator().manual_seed(0)
    weights = {name: tensor + 0.1 * torch.randn(tensor.shape, generator=generator)
               for name, tensor in load_file(tiny_model / "model.safetensors").items()}
    save_file(weights, str(noise / "model.safetensors"), metadata={"format": "pt"})
    return [adapter, noise]


def merge(tiny_model, out, method, sources, data=None, **method_params):
    settings = {"dataset_path": str(data)} if data else {}
    config = MergeConfig.from_dict({"method": method, "base_model": str(tiny_model), "output_dir": str(out),
                                    "sources": [str(s) for s in sources], "method_params": method_params,
                                    **settings})
    return run_merge(config, MemorySink())


def data_loss(model_dir, tiny_model, data) -> float:
    """The mean loss on all rows in one batch, by a model loaded as a user would."""
    from tuning.data.tasks import collate_for_task, load_task_data
    from tuning.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    items = load_task_data("sft", str(data), tokenizer=tokenizer, max_length=512).items
    batch = collate_for_task("sft", pad_token_id=tokenizer.pad_token_id)(items)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return float(model(**batch).loss)


def test_learned_coefficients_lower_the_loss_below_task_arithmetic(tiny_model, sources, data, tmp_path):
    atlas = merge(tiny_model, tmp_path / "atlas", "atlas", sources, data, steps=8, learning_rate=0.1, rows=4,
                  batch_size=4)
    plain = merge(tiny_model, tmp_path / "ta", "task_arithmetic", sources)
    report = atlas.metadata["atlas"]
    assert report["steps"] == 8 and report["rows"] == 4 and report["loss_end"] < report["loss_start"]
    rows = {row["block"]: row["per_source"] for row in report["coefficients"]}
    assert len(rows) == len(load_file(tiny_model / "model.safetensors"))  # one per tensor (tied head: one)
    assert all(c["start"] == 1.0 for per_source in rows.values() for c in per_source)
    assert sum(abs(c["learned"] - c["start"]) > 0.05 for per_source in rows.values() for c in per_source) > 10
    noise = [per_source[1]["learned"] for per_source in rows.values()]
    assert sum(noise) / len(noise) < 1.0  # the noise task vector is turned down on average

    learned_loss, plain_loss = (data_loss(r.output_path, tiny_model, data) for r in (atlas, plain))
    assert learned_loss < plain_loss
    assert learned_loss == pytest.approx(report["loss_end"], rel=1e-4)
    assert plain_loss == pytest.approx(report["loss_start"], rel=1e-4)

    # The saved tensor is θ_base + Σ_i c_i τ_i with the reported coefficients (λ included).
    base = load_file(tiny_model / "model.safetensors")[TENSOR]
    plain_tensor = load_file(Path(plain.output_path) / "model.safetensors")[TENSOR]
    noise_tensor = load_file(sources[1] / "model.safetensors")[TENSOR]
    lora_delta = plain_tensor - base - (noise_tensor - base)  # task arithmetic at weights 1: τ_lora + τ_noise
    lora_c, noise_c = (c["learned"] for c in rows[TENSOR])
    expected = base + lora_c * lora_delta + noise_c * (noise_tensor - base)
    merged = load_file(Path(atlas.output_path) / "model.safetensors")[TENSOR]
    torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-5)


def test_zero_steps_is_task_arithmetic_exactly(tiny_model, sources, data, tmp_path):
    weights = [{"path": str(sources[0]), "weight": 0.7}, {"path": str(sources[1]), "weight": 0.3}]
    config = {"base_model": str(tiny_model), "sources": weights}
    atlas = run_merge(MergeConfig.from_dict({**config, "method": "atlas", "output_dir": str(tmp_path / "a"),
                                             "dataset_path": str(data),
                                             "method_params": {"steps": 0, "scaling": 0.8, "blocks": "layer"}}),
                      MemorySink())
    plain = run_merge(MergeConfig.from_dict({**config, "method": "task_arithmetic", "output_dir": str(tmp_path / "t"),
                                             "method_params": {"scaling": 0.8}}), MemorySink())
    ours, theirs = (load_file(Path(r.output_path) / "model.safetensors") for r in (atlas, plain))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[name], theirs[name]) for name in ours)
    report = atlas.metadata["atlas"]
    assert report["loss_start"] == report["loss_end"]
    assert [row["block"] for row in report["coefficients"]][:3] == ["model.embed_tokens.weight", "model.layers.0",
                                                                    "model.layers.1"]


def test_bad_input_is_refused_naming_the_field(tiny_model, sources, data, tmp_path):
    config = {"method": "atlas", "base_model": str(tiny_model), "output_dir": str(tmp_path / "out"),
              "sources": [str(sources[0])]}
    with pytest.raises(ConfigError) as caught:
        MergeConfig.from_dict(config)
    assert caught.value.errors == {"dataset_path": "aTLAS (learned coefficients) learns its coefficients on data: "
                                                   "pick a dataset"}
    with pytest.raises(ConfigError) as caught:
        MergeConfig.from_dict({**config, "dataset_path": str(data), "method_params": {"scaling": 0.0}})
    assert "no gradient" in caught.value.errors["method_params.scaling"]

    other_base = shutil.copytree(tiny_model, tmp_path / "other-base")
    config = MergeConfig.from_dict({**config, "dataset_path": str(data),
                                    "sources": [{"path": str(sources[0]), "base": str(other_base)}]})
    with pytest.raises(ConfigError) as caught:
        check_merge_sources(config)
    assert set(caught.value.errors) == {"sources.0.base"}
    assert "was trained on" in caught.value.errors["sources.0.base"] and "from one base" in \
        caught.value.errors["sources.0.base"]
