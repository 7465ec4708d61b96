"""GaLore as an optimizer choice (tuning.optimizers): the update on a small
matrix is the paper's (arXiv:2403.03507, Algorithm 2), a full fine-tune
with it trains, stops, resumes exactly and reloads, adapters are refused,
and the memory estimate matches the state it really keeps."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tuning.config import TrainConfig
from tuning.errors import ConfigError
from tuning.events import MemorySink
from tuning.optimizers import build_optimizer, optimizer_state_bytes, projected_parameters
from tuning.train import run_train

BETAS, EPS = (0.9, 0.999), 1e-6  # galore-torch's AdamW defaults


def galore_config(**overrides):
    return SimpleNamespace(**{"optimizer": "galore", "learning_rate": 0.01, "weight_decay": 0.0, "galore_rank": 2,
                              "galore_update_every": 200, "galore_scale": 0.25, **overrides})


def paper_update(gradient, rank, scale, lr):
    """One GaLore step from zero moments, written from the paper: P is the
    gradient's top-r singular vectors on its smaller side; R = Pᵀ·G (or G·Q);
    Adam on R (bias-corrected); ΔW = −η · α · P·N."""
    u, _, vh = torch.linalg.svd(gradient, full_matrices=False)
    tall = gradient.shape[0] >= gradient.shape[1]
    low = gradient @ vh[:rank].T if tall else u[:, :rank].T @ gradient
    m, v = (1 - BETAS[0]) * low, (1 - BETAS[1]) * low**2
    step = lr * math.sqrt(1 - BETAS[1]) / (1 - BETAS[0])
    normalised = m / (v.sqrt() + EPS)
    back = normalised @ vh[:rank] if tall else u[:, :rank] @ normalised
    return -step * scale * back


@pytest.mark.parametrize("shape", [(12, 5), (5, 12)])
def test_one_step_is_the_papers_projected_adam_update(shape):
    torch.manual_seed(0)
    layer = torch.nn.Linear(shape[1], shape[0], bias=False)
    model = torch.nn.Sequential(layer)
    before = layer.weight.detach().clone()
    optimizer = build_optimizer([{"params": [layer.weight]}], galore_config(), model)
    layer(torch.randn(7, shape[1])).pow(2).sum().backward()
    gradient = layer.weight.grad.clone()
    optimizer.step()

    expected = paper_update(gradient, rank=2, scale=0.25, lr=0.01)
    torch.testing.assert_close(layer.weight.detach() - before, expected, rtol=1e-4, atol=1e-7)
    # The moments are rank × (larger side): the memory GaLore saves.
    assert optimizer.state[layer.weight]["exp_avg"].shape == ((12, 2) if shape[0] >= shape[1] else (2, 12))


def test_the_head_embeddings_and_norms_keep_plain_adamw(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    projected = projected_parameters(model)
    names = {name for name, p in model.named_parameters() if id(p) in projected}
    assert names and all(name.endswith(("proj.weight")) for name in names), names
    assert id(model.get_output_embeddings().weight) not in projected
    assert id(model.get_input_embeddings().weight) not in projected


def run_config(base, data, out, **overrides):
    return TrainConfig.from_dict({"base_model": str(base), "dataset_path": str(data), "output_dir": str(out),
                                  "method": "full", "optimizer": "galore", "galore_rank": 4,
                                  "galore_update_every": 100, "galore_scale": 1.0, "learning_rate": 5e-3,
                                  "warmup_ratio": 0.0, "max_steps": 8, "batch_size": 4, "precision": "fp32",
                                  "save_every": 1000, **overrides})


def test_a_full_fine_tune_with_galore_trains_stops_resumes_exactly_and_reloads(tiny_model, memorisable_jsonl,
                                                                             tmp_path):
    whole = MemorySink()
    run_train(run_config(tiny_model, memorisable_jsonl, tmp_path / "whole"), whole)
    losses = [e.loss for e in whole.of_kind("metrics")]
    assert losses[-1] < losses[0] * 0.8, losses

    first = run_train(run_config(tiny_model, memorisable_jsonl, tmp_path / "split"), MemorySink(stop_after=3))
    assert first.status == "cancelled"
    resumed = MemorySink()
    result = run_train(run_config(tiny_model, memorisable_jsonl, tmp_path / "split", resume_from="latest"), resumed)
    # The projectors (computed at step 1, next due at step 100) come back from
    # the checkpoint: a recomputed one would change every later loss.
    assert [e.step for e in resumed.of_kind("metrics")] == [4, 5, 6, 7, 8]
    assert [e.loss for e in resumed.of_kind("metrics")] == pytest.approx(losses[3:], rel=1e-5)
    reloaded = AutoModelForCausalLM.from_pretrained(Path(result.output_path))
    torch.testing.assert_close(reloaded.state_dict()["model.layers.0.mlp.up_proj.weight"],
                               result.model.state_dict()["model.layers.0.mlp.up_proj.weight"].cpu())


def test_galore_is_refused_with_an_adapter_method_and_its_settings_without_galore(tiny_model, memorisable_jsonl,
                                                                                 tmp_path):
    with pytest.raises(ConfigError) as refused:
        run_config(tiny_model, memorisable_jsonl, tmp_path, method="lora")
    assert "LoRA trains an adapter" in refused.value.errors["optimizer"]
    assert "full" in refused.value.errors["optimizer"]
    for method in ("bitfit", "ether", "s2ft"):  # they train biases, reflections, column updates: nothing to project
        with pytest.raises(ConfigError) as refused:
            run_config(tiny_model, memorisable_jsonl, tmp_path, method=method)
        assert "trains no weight matrix in place" in refused.value.errors["optimizer"], method
    assert run_config(tiny_model, memorisable_jsonl, tmp_path, method="llrd").optimizer == "galore"
    with pytest.raises(ConfigError) as refused:
        run_config(tiny_model, memorisable_jsonl, tmp_path, optimizer="adamw")
    assert set(refused.value.errors) == {"galore_rank", "galore_update_every", "galore_scale"}
    assert "GaLore optimizers only" in refused.value.errors["galore_rank"]
    with pytest.raises(ConfigError) as refused:  # auto shards a full fine-tune over 2 devices
        run_config(tiny_model, memorisable_jsonl, tmp_path, devices=2)
    assert "set sharding to ddp" in refused.value.errors["optimizer"]
    assert run_config(tiny_model, memorisable_jsonl, tmp_path, devices=2, sharding="ddp").optimizer == "galore"
    with pytest.raises(ConfigError) as refused:
        run_config(tiny_model, memorisable_jsonl, tmp_path, optimizer="sgd")
    assert "optimizer" in refused.value.errors


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_the_8bit_variant_is_refused_on_a_worker_without_a_gpu(tiny_model, memorisable_jsonl, tmp_path):
    from tuning.config import check_against_model

    with pytest.raises(ConfigError) as refused:
        check_against_model(run_config(tiny_model, memorisable_jsonl, tmp_path, optimizer="galore_8bit"))
    assert "needs a CUDA GPU" in refused.value.errors["optimizer"]


def test_the_estimate_is_the_optimizer_state_galore_really_keeps():
    config = LlamaConfig(vocab_size=1000, hidden_size=256, intermediate_size=688, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    trainable = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer([{"params": list(model.parameters())}], galore_config(galore_rank=32), model)
    model(input_ids=torch.randint(0, 1000, (2, 16)), labels=torch.randint(0, 1000, (2, 16))).loss.backward()
    optimizer.step()
    kept = sum(t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values()
               if torch.is_tensor(t) and t.dim() > 0)
    kept += sum(state["projector"].ortho_matrix.numel() * 4 for state in optimizer.state.values()
                if "projector" in state)
    estimate = optimizer_state_bytes(config, trainable=trainable, optimizer="galore", galore_rank=32)
    assert estimate == pytest.approx(kept, rel=0.3)
    adamw = optimizer_state_bytes(config, trainable=trainable)
    assert adamw == trainable * 8 and estimate < adamw * 0.5  # what the form shows as saved
