"""Several adapters of one base on one copy of it (tuning/adapter_sets.py):
each answers exactly as when loaded alone, the base's weights are held once,
the least recently used adapter makes room, and only adapters of one peft
type share a model."""

from pathlib import Path

import pytest
import torch

from tuning.adapter_sets import AdapterSet, sharing_key
from tuning.loading import load_artifact

PROMPT = "What is the capital of France?"


def _adapter(tiny_model, folder: Path, seed: int, kind: str = "lora", chat_template: str | None = None) -> str:
    """An adapter of the tiny model with its own random (nonzero) weights, saved as the studio saves one."""
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = (LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
              if kind == "lora" else IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                                               feedforward_modules=["down_proj"], init_ia3_weights=False))
    model = get_peft_model(base, config)
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    if chat_template:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    return str(folder)


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


@pytest.fixture
def adapters(tiny_model, tmp_path):
    return [_adapter(tiny_model, tmp_path / f"lora-{i}", seed=i) for i in range(3)]


def test_each_adapter_answers_as_when_loaded_alone_on_one_base(tiny_model, adapters):
    alone = {path: _logits(*load_artifact(path, base_model=str(tiny_model))) for path in adapters}
    assert not torch.allclose(alone[adapters[0]], alone[adapters[1]])  # the adapters differ

    shared = AdapterSet(str(tiny_model))
    embeddings = set()
    for path in [adapters[0], adapters[1], adapters[2], adapters[0], adapters[2], adapters[1]]:
        model, tokenizer = shared.use(path)
        torch.testing.assert_close(_logits(model, tokenizer), alone[path], rtol=0, atol=1e-6)
        embeddings.add(model.get_input_embeddings().weight.data_ptr())
    assert len(embeddings) == 1  # one copy of the base throughout
    assert len(shared.model.peft_config) == 3 and len(shared.adapters) == 3


def test_the_least_recently_used_adapter_makes_room(tiny_model, adapters):
    shared = AdapterSet(str(tiny_model), capacity=2)
    shared.use(adapters[0])
    shared.use(adapters[1])
    shared.use(adapters[0])  # 1 is now the least recently used
    shared.use(adapters[2])
    assert list(shared.adapters) == [str(Path(adapters[0]).resolve()), str(Path(adapters[2]).resolve())]
    assert len(shared.model.peft_config) == 2
    model, tokenizer = shared.use(adapters[1])  # loaded again, answering as alone
    torch.testing.assert_close(_logits(model, tokenizer),
                               _logits(*load_artifact(adapters[1], base_model=str(tiny_model))), rtol=0, atol=1e-6)
    for path in list(shared.adapters):
        shared.remove(path)
    assert shared.model is None and not shared.adapters


def test_each_adapter_keeps_its_own_tokenizer(tiny_model, tmp_path):
    plain = _adapter(tiny_model, tmp_path / "plain", seed=0)
    templated = _adapter(tiny_model, tmp_path / "templated", seed=1, chat_template="{{ messages[0]['content'] }}!")
    shared = AdapterSet(str(tiny_model))
    assert shared.use(templated)[1].chat_template == "{{ messages[0]['content'] }}!"
    assert shared.use(plain)[1].chat_template != "{{ messages[0]['content'] }}!"


def test_only_adapters_of_one_base_and_peft_type_share(tiny_model, tmp_path, adapters):
    ia3 = _adapter(tiny_model, tmp_path / "ia3", seed=5, kind="ia3")
    assert sharing_key(adapters[0], str(tiny_model)) == sharing_key(adapters[1], str(tiny_model))
    assert sharing_key(ia3, str(tiny_model)) != sharing_key(adapters[0], str(tiny_model))
    assert sharing_key(adapters[0], "another-base") != sharing_key(adapters[0], str(tiny_model))
    assert sharing_key(str(tiny_model), str(tiny_model)) is None  # a whole model stands alone
