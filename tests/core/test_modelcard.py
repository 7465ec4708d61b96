"""The model card's load snippet names the base model so that it loads where
the reader is: the local copy (offline, folder models) and the hub id when
the model has one."""

from tuning.config import TrainConfig
from tuning.methods import METHODS
from tuning.modelcard import write_model_card


def _card(tmp_path, base_model: str, base_model_name: str = "", method: str = "lora") -> str:
    config = TrainConfig.from_dict({"base_model": base_model, "base_model_name": base_model_name,
                                    "dataset_path": "rows.jsonl", "output_dir": str(tmp_path)})
    return write_model_card(tmp_path, config=config, method=METHODS[method], final_loss=0.5, steps=3,
                            trainable_parameters=10).read_text()


def test_a_local_copy_of_a_hub_model_shows_both(tmp_path, tiny_model):
    card = _card(tmp_path, str(tiny_model), "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert f'base = AutoModelForCausalLM.from_pretrained("{tiny_model}")' in card
    assert '# base = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")' in card
    assert 'PeftModel.from_pretrained(base, "path/to/this/folder")' in card


def test_a_folder_model_shows_its_path(tmp_path, tiny_model):
    card = _card(tmp_path, str(tiny_model), "Team folder model")
    assert f'base = AutoModelForCausalLM.from_pretrained("{tiny_model}")' in card
    assert "# base" not in card and "Team folder model" in card  # the name stays the card's title


def test_a_model_loaded_from_the_hub_shows_its_id(tmp_path):
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = _card(tmp_path, hub_id)
    assert f'base = AutoModelForCausalLM.from_pretrained("{hub_id}")' in card and "# base" not in card


def test_a_full_model_needs_no_base(tmp_path, tiny_model):
    card = _card(tmp_path, str(tiny_model), "HuggingFaceTB/SmolLM2-135M-Instruct", method="full")
    assert 'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")' in card
    assert "PeftModel" not in card
