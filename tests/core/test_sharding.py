"""Which runs FSDP2 shards (``tuning.sharding``), what it refuses and why,
where it cuts a model, and the memory a device needs under each strategy
(``tuning.methods.memory``). The 2-rank runs themselves are in
test_distributed.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tuning.config import TrainConfig, check_against_model
from tuning.errors import ConfigError
from tuning.methods import METHODS
from tuning.methods.memory import estimate_training_memory
from tuning.sharding import decoder_blocks, shards_states


def _config(**overrides) -> TrainConfig:
    return TrainConfig.from_dict({"base_model": "m", "dataset_path": "d.jsonl", "output_dir": "out", "batch_size": 4,
                                  "method": "full", **overrides})


def test_auto_shards_full_fine_tuning_on_several_devices_and_nothing_else():
    full, lora, qlora = METHODS["full"], METHODS["lora"], METHODS["qlora"]
    assert shards_states("auto", devices=2, method=full)
    assert not shards_states("auto", devices=1, method=full), "one device has nothing to shard across"
    assert not shards_states("auto", devices=2, method=lora), "an adapter is held whole (DDP)"
    assert not shards_states("auto", devices=2, method=qlora)
    assert not shards_states("ddp", devices=2, method=full), "ddp when asked for"
    assert shards_states("fsdp", devices=4, method=METHODS["bitfit"]), "any method that trains the model itself"


def test_fsdp_is_refused_where_it_does_not_apply_naming_the_setting(tiny_model):
    """When the job is created (check_against_model, which the studio calls) and again on the worker."""
    check_against_model(_config(base_model=str(tiny_model), devices=2, sharding="fsdp"))  # the case it is for
    with pytest.raises(ConfigError) as adapter:
        check_against_model(_config(base_model=str(tiny_model), devices=2, sharding="fsdp", method="lora"))
    assert "LoRA" in adapter.value.errors["sharding"] and "ddp" in adapter.value.errors["sharding"]
    with pytest.raises(ConfigError) as one_device:
        check_against_model(_config(base_model=str(tiny_model), devices=1, sharding="fsdp"))
    assert "2 devices or more" in one_device.value.errors["sharding"]
    with pytest.raises(ConfigError) as unknown:
        _config(sharding="zero3")
    assert "sharding" in unknown.value.errors


def test_each_decoder_block_is_a_unit_of_its_own():
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                         num_attention_heads=2, num_key_value_heads=1))
    blocks = decoder_blocks(model)
    assert len(blocks) == 3 and all(isinstance(block, LlamaDecoderLayer) for block in blocks)


SHAPE = SimpleNamespace(hidden_size=1024, num_hidden_layers=16, num_attention_heads=16, vocab_size=32000)
PARAMETERS = 300_000_000


def _estimate(**settings):
    return estimate_training_memory(SHAPE, trainable=PARAMETERS, total=PARAMETERS, batch_size=8, max_length=512,
                                    precision="bf16", **settings)


def test_fsdp_divides_weights_gradients_and_optimizer_state_by_the_devices_and_ddp_replicates_them():
    one, ddp, fsdp = _estimate(), _estimate(devices=4), _estimate(devices=4, sharded=True)
    # DDP: every device holds the whole model and its states.
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (PARAMETERS * 4, PARAMETERS * 4, PARAMETERS * 8)
    # FSDP2: a quarter of each, plus what a device gathers to compute: the root (embeddings) and two blocks.
    assert (fsdp.gradients, fsdp.optimizer) == (PARAMETERS, PARAMETERS * 2)
    root = 32000 * 1024
    assert fsdp.weights == int(PARAMETERS + (root + 2 * (PARAMETERS - root) / 16) * 4)
    # Activations are for the device's share of the batch (8 rows over 4 devices: 2), sharded or not.
    assert ddp.activations == fsdp.activations == estimate_training_memory(
        SHAPE, trainable=PARAMETERS, total=PARAMETERS, batch_size=2, max_length=512, precision="bf16").activations
    assert ddp.activations < one.activations
    assert fsdp.total < ddp.total < one.total


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True))


class _RunsCode:
    """What a tampered index could hold: unpickling it would run a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_sharded_checkpoint_is_read_back_without_running_pickled_code(tmp_path):
    import pickle

    import torch

    from tuning import checkpoints
    from tuning.ranks import SINGLE

    torch.manual_seed(0)
    model = _tiny_llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.arange(8)[None], labels=torch.arange(8)[None]).loss.backward()
    optimizer.step()
    directory = checkpoints.save_sharded_checkpoint(tmp_path / "step-0000001", model=model, optimizer=optimizer,
                                                    scheduler=scheduler, state=checkpoints.TrainerState(step=1),
                                                    ranks=SINGLE)
    weights = checkpoints.load_sharded_weights(directory)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(weights[name], tensor)

    fresh = _tiny_llama()
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=5.0)
    state = checkpoints.load_checkpoint(directory, model=fresh, optimizer=fresh_optimizer,
                                        scheduler=torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda s: 1.0))
    assert state.step == 1
    assert fresh_optimizer.param_groups[0]["lr"] == 1e-3, "the optimizer's settings (non-tensor values) came back"
    torch.testing.assert_close(fresh_optimizer.state_dict()["state"][0]["exp_avg"],
                               optimizer.state_dict()["state"][0]["exp_avg"])

    marker = tmp_path / "ran"
    (directory / "sharded" / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(pickle.UnpicklingError, match="not part of a DCP index"):
        checkpoints.load_sharded_weights(directory)
    assert not marker.exists()
