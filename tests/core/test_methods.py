"""Every method in the catalogue: it trains, the loss falls on a memorisable
batch, its output reloads in stock peft/transformers with the same logits,
and the trainable-parameter estimate shown in the UI is the real count.

The tiny model has hidden size 32 (k/v projections 16 wide, MLP 64), so the
rows pick ranks and block sizes that fit it.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, BertConfig

from tuning.config import TrainConfig, check_against_model
from tuning.data import sft
from tuning.data.readers import read_examples
from tuning.errors import ConfigError
from tuning.fields import config_from_dict
from tuning.methods import CAPABILITIES, GROUPS, METHODS, TASKS, MethodContext, bottleneck, ladder, mola, qlora
from tuning.methods.common import count_parameters
from tuning.methods.estimate import estimate_trainable_parameters
from tuning.models import load_tokenizer
from tests.tiny_model import LORA_SOURCES, tiny_lora_sources

REPO = Path(__file__).resolve().parents[2]
STEPS = 20

# id: (method, method_params, learning rate). Every CPU method has a row;
# LoRA's options get rows of their own.
ROWS = {
    "full": ("full", {}, 2e-3),
    "lora": ("lora", {"rank": 8, "alpha": 16, "dropout": 0.0}, 2e-2),
    "lora-rslora-dora-plus": ("lora", {"rank": 4, "alpha": 8, "dropout": 0.0, "use_rslora": True, "use_dora": True,
                                       "loraplus_lr_ratio": 4.0}, 1e-2),
    "lora-gaussian": ("lora", {"rank": 4, "dropout": 0.0, "init": "gaussian"}, 2e-2),
    "lora-pissa": ("lora", {"rank": 4, "dropout": 0.0, "init": "pissa"}, 1e-2),
    "lora-olora": ("lora", {"rank": 4, "dropout": 0.0, "init": "olora"}, 1e-2),
    "lora-corda": ("lora", {"rank": 4, "dropout": 0.0, "init": "corda"}, 1e-2),
    "lora-eva": ("lora", {"rank": 4, "dropout": 0.0, "init": "eva", "eva_rho": 1.0}, 2e-2),
    "adalora": ("adalora", {"initial_rank": 6, "target_rank": 4, "dropout": 0.0, "reallocate_every": 1}, 2e-2),
    "increlora": ("increlora", {"initial_rank": 2, "target_rank": 4, "dropout": 0.0, "grow_every": 2}, 2e-2),
    "triadaptlora": ("triadaptlora", {"initial_rank": 2, "target_rank": 4, "grow_by": 2, "dropout": 0.0,
                                      "grow_every": 2}, 2e-2),
    "loha": ("loha", {"rank": 4, "alpha": 8}, 2e-2),
    "lokr": ("lokr", {"rank": 4, "alpha": 8}, 2e-2),
    "vera": ("vera", {"rank": 16}, 5e-2),
    "vblora": ("vblora", {"rank": 4, "num_vectors": 32, "vector_length": 16}, 2e-2),
    "randlora": ("randlora", {"rank": 8}, 2e-2),
    "mos": ("mos", {"rank": 4, "pool_rank": 4, "shards_per_vector": 2, "private_shards": 1}, 2e-2),
    "mola": ("mola", {"experts": "2,4", "top_k": 2, "rank": 4, "alpha": 8, "dropout": 0.0}, 2e-2),
    "oft": ("oft", {"block_size": 8}, 2e-2),
    "boft": ("boft", {"block_size": 8}, 2e-2),
    "hra": ("hra", {"rank": 4}, 2e-2),
    "road": ("road", {"group_size": 8}, 2e-2),
    "ether": ("ether", {"blocks": 4}, 1e-2),
    "ether-plus": ("ether", {"variant": "ether_plus", "blocks": 4}, 1e-2),
    "bottleneck-houlsby": ("bottleneck", {"variant": "houlsby", "reduction_factor": 4}, 2e-2),
    "bottleneck-pfeiffer": ("bottleneck", {"variant": "pfeiffer", "reduction_factor": 4}, 2e-2),
    "bottleneck-compacter": ("bottleneck", {"variant": "compacter", "reduction_factor": 4, "phm_dim": 4}, 2e-2),
    "ia3": ("ia3", {}, 5e-2),
    "fourierft": ("fourierft", {"n_frequency": 64}, 5e-2),
    "ln_tuning": ("ln_tuning", {}, 5e-2),
    "prompt_tuning": ("prompt_tuning", {"num_virtual_tokens": 8, "init": "text", "init_text": "Answer:"}, 5e-2),
    "prefix_tuning": ("prefix_tuning", {"num_virtual_tokens": 8}, 5e-2),
    "p_tuning": ("p_tuning", {"num_virtual_tokens": 8, "encoder_hidden_size": 32}, 2e-2),
    "bitfit": ("bitfit", {}, 2e-2),
    "top_k": ("top_k", {"layers": 1}, 2e-3),
    "hft": ("hft", {}, 2e-3),
    "llrd": ("llrd", {"decay": 0.8}, 2e-3),
    "s2ft": ("s2ft", {"heads": 1, "channels": 8}, 1e-2),
    "ladder": ("ladder", {"reduction_factor": 4}, 1e-2),
    "eigenlora": ("eigenlora", {"source_adapters": ",".join(str(path) for path in LORA_SOURCES), "rank": 4}, 5e-2),
}
CPU_METHODS = sorted(name for name, method in METHODS.items() if not method.needs_cuda)
GROWING = {name for name, method in METHODS.items() if method.grow}


def test_every_cpu_method_has_a_row():
    assert sorted({method for method, _, _ in ROWS.values()}) == CPU_METHODS


@pytest.fixture(scope="session", autouse=True)
def lora_sources() -> list[Path]:
    """The LoRA adapters EigenLoRAx's rows name (built once, cached)."""
    return tiny_lora_sources()


@pytest.fixture(scope="module")
def biased_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny Llama with bias terms (new, zero), for BitFit: Llama has none."""
    path = tmp_path_factory.mktemp("biased")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attention_bias=True, mlp_bias=True)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(path)  # a complete base model directory
    return path


@pytest.fixture(scope="module")
def batch(tiny_model, tmp_path_factory) -> dict:
    rows = [("Say the colour of the sky.", "Blue."), ("Say the colour of grass.", "Green."),
            ("Count to three.", "One, two, three."), ("Greet me.", "Hello!")]
    path = tmp_path_factory.mktemp("data") / "memorise.jsonl"
    path.write_text("".join(json.dumps({"instruction": p, "output": r}) + "\n" for p, r in rows))
    tokenizer = load_tokenizer(str(tiny_model))
    items = sft.tokenize_examples(read_examples(path), tokenizer, max_length=64, loss_on_prompt=False)
    return sft.collate(items, pad_token_id=tokenizer.pad_token_id)


def load(path, task="sft"):
    auto = AutoModelForSequenceClassification if task == "classify" else AutoModelForCausalLM
    return auto.from_pretrained(path, dtype=torch.float32)


def prepared(name, method_params, base, batch, task="sft"):
    method = METHODS[name]
    params = config_from_dict(method.params, method_params)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    context = MethodContext(task=task, calibration_batches=lambda: iter([inputs]), total_steps=STEPS,
                            base_model=str(base))
    torch.manual_seed(0)
    return method, params, method.prepare(load(base, task), params, context)


def train(method, params, model, batch, lr) -> list[float]:
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = method.param_groups(model, params, lr) if method.param_groups else [{"params": trainable}]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    model.train()
    losses = []
    for step in range(1, STEPS + 1):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        if method.on_step:
            method.on_step(model, step)
        if method.grow:
            method.grow(model, step, optimizer)
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("row", list(ROWS))
def test_method_trains_reloads_in_stock_libraries_and_matches_its_estimate(row, tiny_model, biased_model, batch,
                                                                         tmp_path):
    name, method_params, lr = ROWS[row]
    base = biased_model if name == "bitfit" else tiny_model
    method, params, model = prepared(name, method_params, base, batch)

    trainable, total = count_parameters(model)
    assert 0 < trainable <= total
    assert estimate_trainable_parameters(AutoConfig.from_pretrained(base), name, method_params) == (trainable, total)

    losses = train(method, params, model, batch, lr)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses

    (method.export or (lambda m, d: m.save_pretrained(d)))(model, tmp_path)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        trained = model.eval()(**inputs).logits
        if (tmp_path / bottleneck.CONFIG_FILE).exists():  # no stock library loads these: their method does
            stock = bottleneck.attach_saved(load(base), tmp_path).eval()
        elif (tmp_path / ladder.CONFIG_FILE).exists():
            stock = ladder.attach_saved(load(base), tmp_path).eval()
        elif (tmp_path / mola.CONFIG_FILE).exists():
            stock = mola.attach_saved(load(base), tmp_path).eval()
        elif method.produces == "adapter":
            from peft import PeftModel

            stock = PeftModel.from_pretrained(load(base), tmp_path).eval()
        else:
            stock = load(tmp_path).eval()
        # A converted PiSSA/OLoRA/CorDA adapter computes W + (AB - A0B0) where
        # training ran (W - A0B0) + AB: equal but for float32 rounding, whose
        # size depends on the summation order, so on the number of threads
        # (1 per xdist worker on 2 cores: up to 1.4e-4 on logits of ~1.3, in 4
        # of 8 M values). A wrong conversion is off by 1e-2 and more.
        # IncreLoRA's and TriAdaptLoRA's adapters are their three-factor updates multiplied out into LoRA's
        # two: the same product summed in another order (up to 1.5e-5 seen).
        atol = 3e-4 if method_params.get("init") in ("pissa", "olora", "corda") else 1e-4 if name in GROWING else 1e-5
        torch.testing.assert_close(stock(**inputs).logits, trained, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("name", CPU_METHODS)
def test_method_prepares_a_classifier_with_a_trainable_head(name, tiny_model, biased_model, batch):
    method_params = next(params for method, params, _ in ROWS.values() if method == name)
    base = biased_model if name == "bitfit" else tiny_model
    _, _, model = prepared(name, method_params, base, batch, task="classify")
    head = [n for n, p in model.named_parameters() if "score" in n and p.requires_grad]
    assert head, "the new classification head must train"
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "labels": torch.tensor([0, 1, 0, 1])}
    loss = model(**inputs).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert estimate_trainable_parameters(AutoConfig.from_pretrained(base), name, method_params,
                                         task="classify") == count_parameters(model)


def test_a_pissa_classifier_keeps_its_head_when_converted_to_plain_lora(tiny_model, batch, tmp_path):
    method, params, model = prepared("lora", {"rank": 4, "init": "pissa"}, tiny_model, batch, task="classify")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model(**inputs, labels=torch.tensor([0, 1, 0, 1])).loss.backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    method.export(model, tmp_path)
    from peft import PeftModel

    stock = PeftModel.from_pretrained(load(tiny_model, "classify"), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(stock(**inputs).logits, model.eval()(**inputs).logits, rtol=1e-5, atol=1e-4)


# --- refusals --------------------------------------------------------------

def refusal(name, method_params, model_config, task="sft") -> dict:
    method = METHODS[name]
    return method.check(config_from_dict(method.params, method_params), model_config, task)


def test_qlora_is_refused_without_cuda(tiny_model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = AutoConfig.from_pretrained(tiny_model)
    assert refusal("qlora", {"rank": 8}, config) == {
        "method": "QLoRA needs a CUDA GPU (bitsandbytes 4-bit); this worker has none"}
    assert METHODS["qlora"].needs_cuda
    # What the UI shows before a job: the estimate works without a GPU.
    assert estimate_trainable_parameters(config, "qlora", {"rank": 8}) == \
        estimate_trainable_parameters(config, "lora", {"rank": 8})


def test_qlora_names_bitsandbytes_where_a_gpu_lacks_it(tiny_model, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(qlora.importlib.util, "find_spec", lambda name: None)
    assert "bitsandbytes" in refusal("qlora", {}, AutoConfig.from_pretrained(tiny_model))["method"]


@pytest.mark.parametrize("name, method_params, field, words", [
    ("lora", {"rank": 32}, "rank", "k_proj"),
    ("lora", {"rank": 4, "init": "pissa", "use_dora": True}, "use_dora", "DoRA"),
    ("lora", {"rank": 4, "target_modules": "no_such_module"}, "target_modules", "no_such_module"),
    ("adalora", {"initial_rank": 4, "target_rank": 8}, "target_rank", "initial rank"),
    ("adalora", {"initial_rank": 24, "target_rank": 8}, "initial_rank", "larger than"),
    ("increlora", {"initial_rank": 4, "target_rank": 2}, "target_rank", "only grows"),
    ("triadaptlora", {"initial_rank": 1, "target_rank": 40}, "target_rank", "can hold"),
    ("oft", {"block_size": 12}, "block_size", "must divide"),
    ("boft", {"block_size": 12}, "block_size", "does not fit"),
    ("vblora", {"vector_length": 24}, "vector_length", "does not fit"),
    ("road", {"group_size": 12}, "group_size", "does not fit"),
    ("road", {"group_size": 7}, "group_size", "even"),
    ("hra", {"rank": 3}, "rank", "even"),
    ("ether", {"blocks": 5}, "blocks", "does not divide"),
    ("ether", {"target_modules": "no_such_module"}, "target_modules", "no_such_module"),
    ("bottleneck", {"variant": "compacter", "reduction_factor": 4, "phm_dim": 3}, "phm_dim", "does not divide"),
    ("bottleneck", {"ffn_output": "fc2"}, "ffn_output", "fc2"),
    ("s2ft", {"heads": 5}, "heads", "only 4"),
    ("mos", {"shards_per_vector": 3}, "shards_per_vector", "does not divide"),
    ("mos", {"rank": 8, "pool_rank": 1, "private_shards": 0}, "pool_rank", "fewer than"),
    ("mos", {"pool_rank": 1, "shards_per_vector": 2, "private_shards": 3}, "private_shards", "share of its pool"),
    ("mola", {"experts": "2,1", "top_k": 2}, "top_k", "block 1"),
    ("mola", {"experts": "2,4,6"}, "experts", "2 blocks"),
    ("mola", {"experts": "two"}, "experts", "whole numbers"),
    ("s2ft", {"channels": 65}, "channels", "only 64"),
    ("s2ft", {"heads": 0, "channels": 0}, "heads", "at least one"),
    ("s2ft", {"ffn_output": "fc2"}, "ffn_output", "fc2"),
    ("ladder", {"reduction_factor": 64}, "reduction_factor", "leaves no side width"),
    ("eigenlora", {"source_adapters": str(LORA_SOURCES[0])}, "source_adapters", "at least 2"),
    ("fourierft", {"n_frequency": 600}, "n_frequency", "does not fit"),
    ("bitfit", {}, "method", "has none"),
    ("top_k", {"layers": 3}, "layers", "only 2"),
    ("prompt_tuning", {"init": "text"}, "init_text", "required"),
])
def test_impossible_combinations_are_refused_naming_the_field(name, method_params, field, words, tiny_model):
    problems = refusal(name, method_params, AutoConfig.from_pretrained(tiny_model))
    assert list(problems) == [field] and words in problems[field], problems


def test_prefix_tuning_is_refused_for_an_encoder_classifier_but_not_a_causal_one(tiny_model):
    bert = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64)
    problems = refusal("prefix_tuning", {}, bert, task="classify")
    assert "BertForSequenceClassification" in problems["method"]
    assert refusal("prefix_tuning", {}, AutoConfig.from_pretrained(tiny_model), task="classify") == {}
    assert refusal("bitfit", {}, bert, task="classify") == {}  # BERT has biases


def test_fitting_settings_pass_every_check(tiny_model):
    config = AutoConfig.from_pretrained(tiny_model)
    for name, method_params, _ in ROWS.values():
        if METHODS[name].check and name != "bitfit":
            assert refusal(name, method_params, config) == {}, name


def test_the_form_reports_a_refusal_under_method_params(tiny_model, memorisable_jsonl, tmp_path):
    config = TrainConfig.from_dict({"base_model": str(tiny_model), "dataset_path": str(memorisable_jsonl),
                                    "output_dir": str(tmp_path), "method": "lora", "method_params": {"rank": 32}})
    with pytest.raises(ConfigError) as refused:
        check_against_model(config)
    assert list(refused.value.errors) == ["method_params.rank"]


# --- learning-rate groups ----------------------------------------------------

def test_loraplus_gives_b_matrices_ratio_times_the_learning_rate(tiny_model, batch):
    method, params, model = prepared("lora", {"rank": 4, "loraplus_lr_ratio": 16.0}, tiny_model, batch)
    groups = method.param_groups(model, params, 1e-3)
    lr_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(lr_of) == len(named) == sum(len(g["params"]) for g in groups)
    assert {lr_of[id(p)] for n, p in named.items() if "lora_B" in n} == {1e-3 * 16}
    assert {lr_of[id(p)] for n, p in named.items() if "lora_A" in n} == {1e-3}
    assert all("weight_decay" not in g or g["weight_decay"] == 0.0 for g in groups)


def test_llrd_decays_the_learning_rate_layer_by_layer_from_the_top(tiny_model, batch):
    method, params, model = prepared("llrd", {"decay": 0.5}, tiny_model, batch)
    groups = method.param_groups(model, params, 1.0)
    lr_of = {id(p): group["lr"] for group in groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert len(lr_of) == len(named)  # every parameter, once
    assert lr_of[id(named["model.norm.weight"])] == 1.0
    assert lr_of[id(named["model.layers.1.mlp.up_proj.weight"])] == 0.5
    assert lr_of[id(named["model.layers.0.self_attn.q_proj.weight"])] == 0.25
    assert lr_of[id(named["model.embed_tokens.weight"])] == 0.125  # also the tied output head


def test_hft_trains_about_half_of_each_blocks_modules_chosen_by_the_seed(tiny_model, batch):
    def trained(seed):
        _, _, model = prepared("hft", {"seed": seed}, tiny_model, batch)
        return {n for n, p in model.named_parameters() if p.requires_grad}

    first, again, other = trained(0), trained(0), trained(1)
    assert first == again and first != other
    for block in ("model.layers.0.", "model.layers.1."):
        assert sum(n.startswith(block + "self_attn.") for n in first) == 2  # of q, k, v, o
        assert sum(n.startswith(block) and "layernorm" in n for n in first) == 1  # of the two norms
    # The odd MLP group (gate, up, down) rounds up in one block and down in the other.
    assert sorted(sum(n.startswith(f"model.layers.{i}.mlp.") for n in first) for i in (0, 1)) == [1, 2]
    assert not any("embed_tokens" in n for n in first)


# --- catalogue ----------------------------------------------------------------

def test_methods_json_lists_the_catalogue_with_its_settings():
    done = subprocess.run([sys.executable, "-m", "tuning", "methods", "--json"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["name"] for row in rows] == list(METHODS)
    for row in rows:
        assert row["label"] and row["description"] and row["group"] in GROUPS
        assert row["paper"].startswith("https://arxiv.org/abs/")
        assert set(row["tasks"]) <= set(TASKS)
        assert {flag: type(row[flag]) for flag in CAPABILITIES} == {flag: bool for flag in CAPABILITIES}
        for spec in row["params"]:
            assert {"name", "type", "default", "help", "min", "max", "choices"} <= set(spec) and spec["help"]
    assert {row["name"] for row in rows if row["needs_cuda"]} == {"qlora"}
    assert {row["name"] for row in rows if not row["packs_rows"]} == {"prompt_tuning", "prefix_tuning", "p_tuning",
                                                                      "ladder"}
    assert not any(row["folds_into_base"] for row in rows if row["produces"] == "model")
    lora = next(row for row in rows if row["name"] == "lora")
    assert {"pissa", "olora", "corda", "eva"} <= set(next(s for s in lora["params"] if s["name"] == "init")["choices"])


def test_the_catalogue_imports_without_torch():
    # The web process draws the form from the table and must not load torch.
    code = "import sys, tuning.methods; assert not {'torch', 'peft', 'transformers'} & set(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0


@pytest.mark.parametrize("name", list(METHODS))
def test_presets_are_valid_train_settings(name, tiny_model, memorisable_jsonl, tmp_path):
    presets = METHODS[name].presets
    assert set(presets) == {"quick", "balanced", "thorough"}
    for preset in presets.values():
        TrainConfig.from_dict({"base_model": str(tiny_model), "dataset_path": str(memorisable_jsonl),
                               "output_dir": str(tmp_path), "method": name, **preset})
