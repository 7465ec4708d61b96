"""Adapters that cannot be folded into their base (a bottleneck adapter, a
prompt-tuning adapter, a ladder side network, trained for real on the tiny model) are refused
by merge, fold and quantize before any work, naming the method and what to
do instead, in the library and through the CLI."""

import json
from pathlib import Path

import pytest
import yaml

from tuning.__main__ import main
from tuning.config import TrainConfig
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.merge import check_merge_sources
from tuning.merge.config import MergeConfig
from tuning.quantize.config import QuantizeConfig
from tuning.quantize.run import check_quantize_source
from tuning.train import run_train


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("unfoldable")
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {w}.", "output": f"{w}!"}) + "\n"
                            for w in ("yes", "blue")))
    out = {}
    for name, method, params in (("pfeiffer", "bottleneck", {"variant": "pfeiffer"}),
                                 ("prompt", "prompt_tuning", {}), ("ladder", "ladder", {"reduction_factor": 4})):
        config = TrainConfig.from_dict({"base_model": str(tiny_model), "dataset_path": str(data), "method": method,
                                        "method_params": params, "output_dir": str(root / name), "max_steps": 1,
                                        "batch_size": 2, "precision": "fp32"})
        out[name] = Path(run_train(config, MemorySink()).output_path)
    return out


def _merge_config(tiny_model, tmp_path, method, sources) -> MergeConfig:
    return MergeConfig.from_dict({"method": method, "base_model": str(tiny_model), "output_dir": str(tmp_path / "out"),
                                  "sources": [str(s) for s in sources]})


@pytest.mark.parametrize("method", ["fold", "task_arithmetic"])
def test_merge_and_fold_refuse_a_bottleneck_adapter_naming_the_method(tiny_model, trained, tmp_path, method):
    with pytest.raises(ConfigError) as caught:
        check_merge_sources(_merge_config(tiny_model, tmp_path, method, [trained["pfeiffer"]]))
    message = caught.value.errors["sources.0.path"]
    assert "is a Pfeiffer bottleneck adapter (Bottleneck adapters)" in message
    assert "cannot be folded into the base or merged" in message and "train a LoRA-family adapter" in message
    assert "neither a model" not in message


def test_fold_refuses_a_ladder_side_network_naming_it(tiny_model, trained, tmp_path):
    with pytest.raises(ConfigError) as caught:
        check_merge_sources(_merge_config(tiny_model, tmp_path, "fold", [trained["ladder"]]))
    assert "is a Ladder Side-Tuning side network" in caught.value.errors["sources.0.path"]


def test_a_prompt_tuning_adapter_is_refused_beside_a_model_by_its_position(tiny_model, trained, tmp_path):
    config = _merge_config(tiny_model, tmp_path, "task_arithmetic", [tiny_model, trained["prompt"]])
    with pytest.raises(ConfigError) as caught:
        check_merge_sources(config)
    assert set(caught.value.errors) == {"sources.1.path"}
    assert "is a Prompt tuning adapter: it adds virtual tokens" in caught.value.errors["sources.1.path"]


@pytest.mark.parametrize("scheme", ["gguf_q8_0", "compeft"])
def test_quantize_refuses_them_before_reading_weights(tiny_model, trained, tmp_path, scheme):
    for name, label in (("pfeiffer", "Pfeiffer bottleneck adapter"), ("prompt", "Prompt tuning adapter")):
        config = QuantizeConfig.from_dict({"scheme": scheme, "source_path": str(trained[name]),
                                           "base_model": str(tiny_model), "output_dir": str(tmp_path / "q")})
        with pytest.raises(ConfigError) as caught:
            check_quantize_source(config, on_worker=False)
        assert set(caught.value.errors) == {"source_path"}
        assert label in caught.value.errors["source_path"] and "quantize or export the base model" in \
            caught.value.errors["source_path"]


def test_the_cli_prints_the_refusal(tiny_model, trained, tmp_path, capsys):
    config = tmp_path / "merge.yaml"
    config.write_text(yaml.safe_dump({"method": "fold", "base_model": str(tiny_model), "sources": [str(trained[
        "pfeiffer"])], "output_dir": str(tmp_path / "out")}))
    assert main(["merge", str(config)]) == 2
    assert "sources.0.path: " in capsys.readouterr().err and not (tmp_path / "out").exists()
