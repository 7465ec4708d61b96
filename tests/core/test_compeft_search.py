"""ComPEFT's α search and the delta schemes' presets: on the tiny model the
search scores each α of the grid by validation loss, writes the one with
the lowest, and its losses are those of the outputs written at each α and
reloaded as a user would; the presets are valid settings that say what
they trade."""

import json
from pathlib import Path

import pytest
import torch

from tuning.data.tasks import collate_for_task, load_task_data
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.models import load_tokenizer
from tuning.quantize import QUANT_SCHEMES, compeft, describe
from tuning.quantize.config import QuantizeConfig
from tuning.quantize.run import run_quantize
from tests.core.test_quantize_delta import _config, full_finetune, lora_adapter, rows_jsonl  # noqa: F401 (fixtures)

GRID = [0.5, 2.0, 8.0]


def validation_loss(model, data: Path, tokenizer_dir) -> float:
    """The loss of all four rows in one batch (the search's batch), computed here without the search's code."""
    tokenizer = load_tokenizer(str(tokenizer_dir))
    items = load_task_data("sft", str(data), tokenizer=tokenizer, max_length=256).items
    batch = collate_for_task("sft", pad_token_id=tokenizer.pad_token_id)(items)
    with torch.no_grad():
        return float(model.float().eval()(**batch).loss)


def test_the_search_writes_the_alpha_with_the_lowest_validation_loss(full_finetune, tiny_model,  # noqa: F811
                                                                      rows_jsonl, tmp_path):  # noqa: F811
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


def test_the_search_scores_an_adapter_as_peft_loads_it(lora_adapter, tiny_model, rows_jsonl, tmp_path):  # noqa: F811
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
