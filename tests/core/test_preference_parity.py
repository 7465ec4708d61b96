"""Each preference loss of tuning.preference (and KTO's, tuning.preference_kto)
against TRL's own trainer on the same batch: the loss, and the gradient of
every LoRA weight.

The studio computes the losses with TRL's loss functions inside its own
loop; these tests hand the same token ids to TRL's DPOTrainer, CPOTrainer,
ORPOTrainer and KTOTrainer (built on the same LoRA model) and compare. The adapter's
B matrices start random, so the policy differs from the reference (the
base with the adapter switched off) and every term of each loss is live.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from tuning.data.preference import PreferencePair, collate_pairs, tokenize_pair
from tuning.data.unpaired import UnpairedCompletion, collate_unpaired, tokenize_completions
from tuning.preference import PreferenceObjective, PreferenceSettings, token_logps
from tuning.preference_kto import KTOObjective

PAIRS = [PreferencePair(prompt="What is two plus two?", chosen="Four.", rejected="Five, or maybe six.", row=1),
         PreferencePair(prompt="Name a colour of the sky.", chosen="Blue, on a clear day.", rejected="Green.", row=2),
         PreferencePair(prompt="Say hello in French.", chosen="Bonjour!", rejected="Hola, amigo.", system="Be brief.",
                        row=3)]


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


@pytest.fixture
def lora_and_batch(tiny_model):
    """(the studio's LoRA model, the tokenizer, a batch of pairs, a fresh base model for TRL's trainer)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    batch = collate_pairs([tokenize_pair(p, tokenizer, max_length=64) for p in PAIRS],
                          pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), _lora_config())
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(std=0.2)
    return model, tokenizer, batch, lambda: AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)


def _same_adapter(trainer, ours):
    """TRL's trainer wraps the base with the same LoRA config (a PeftModel handed to it would count as a
    pretrained adapter, whose copy becomes the reference); its adapter then gets our weights."""
    theirs = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for name, weight in ours.named_parameters():
            if weight.requires_grad:
                theirs[name].copy_(weight)
    return trainer


def _loss_and_grads(model, compute):
    """(loss, {name: gradient}) of ``model``'s trainable weights, where ``compute`` trains ``model``."""
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def _dataset():
    from datasets import Dataset

    return Dataset.from_list([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in PAIRS])


def _common(tmp_path) -> dict:
    return {"output_dir": str(tmp_path / "trl"), "report_to": "none", "use_cpu": True, "bf16": False,
            "per_device_train_batch_size": len(PAIRS), "max_length": 64}


def _dpo_loss(model, tokenizer, batch, base, tmp_path, *, loss_type: str, beta: float, swap: bool = False):
    """TRL's DPOTrainer.compute_loss on the batch (chosen and rejected swapped where asked)."""
    from trl import DPOConfig, DPOTrainer

    trainer = _same_adapter(DPOTrainer(model=base(), args=DPOConfig(beta=beta, loss_type=[loss_type],
                                                                  **_common(tmp_path)),
                                       train_dataset=_dataset(), processing_class=tokenizer,
                                       peft_config=_lora_config()), model)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != -100).long()}
    if swap:
        inputs = {key: torch.cat(value.chunk(2)[::-1]) for key, value in inputs.items()}
    return _bound(lambda: trainer.compute_loss(trainer.model, inputs), trainer)


def _bound(compute, trainer):
    compute.trainer = trainer
    return compute


def _old_style_batch(batch) -> dict:
    """The batch in the keys TRL's CPO and ORPO trainers read."""
    chosen = {key: value.chunk(2)[0] for key, value in batch.items()}
    rejected = {key: value.chunk(2)[1] for key, value in batch.items()}
    return {f"{side}_{key}": part[key] for side, part in (("chosen", chosen), ("rejected", rejected))
            for key in ("input_ids", "attention_mask", "labels")}


def _cpo_or_orpo_loss(model, tokenizer, batch, base, tmp_path, *, orpo: bool, **settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if orpo:
            from trl.experimental.orpo import ORPOConfig as Config, ORPOTrainer as Trainer
        else:
            from trl.experimental.cpo import CPOConfig as Config, CPOTrainer as Trainer
    trainer = _same_adapter(Trainer(model=base(), args=Config(**settings, **_common(tmp_path)),
                                    train_dataset=_dataset(), processing_class=tokenizer, peft_config=_lora_config()),
                            model)
    return _bound(lambda: trainer.get_batch_loss_metrics(trainer.model, _old_style_batch(batch))[0], trainer)


CASES = {
    "dpo": (PreferenceSettings(loss="dpo", beta=0.1), lambda *a: _dpo_loss(*a, loss_type="sigmoid", beta=0.1)),
    "ipo": (PreferenceSettings(loss="ipo", beta=0.5), lambda *a: _dpo_loss(*a, loss_type="ipo", beta=0.5)),
    "orpo": (PreferenceSettings(loss="orpo", beta=0.2), lambda *a: _cpo_or_orpo_loss(*a, orpo=True, beta=0.2)),
    "simpo": (PreferenceSettings(loss="simpo", beta=2.0, simpo_gamma=0.7, label_smoothing=0.05),
              lambda *a: _cpo_or_orpo_loss(*a, orpo=False, loss_type="simpo", beta=2.0, simpo_gamma=0.7,
                                           label_smoothing=0.05, cpo_alpha=0.0)),
    "cpo": (PreferenceSettings(loss="cpo", beta=0.3, cpo_alpha=0.8, label_smoothing=0.1),
            lambda *a: _cpo_or_orpo_loss(*a, orpo=False, loss_type="sigmoid", beta=0.3, cpo_alpha=0.8,
                                         label_smoothing=0.1)),
}


def _assert_same(ours, theirs):
    (loss, grads), (trl_loss, trl_grads) = ours, theirs
    torch.testing.assert_close(loss, trl_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == trl_grads.keys() and len(grads) == 8  # A and B of q and v in 2 layers
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        # atol 1e-5 against gradients of about 0.1: an AVX-512 CPU's kernels sum in another order than an AVX2
        # one's, and one entry of 128 (3.7e-3) came out 1.4e-6 apart there
        torch.testing.assert_close(grad, trl_grads[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("loss", sorted(CASES))
def test_loss_and_lora_gradients_match_trl(loss, lora_and_batch, tmp_path):
    model, tokenizer, batch, base = lora_and_batch
    settings, trl_loss = CASES[loss]
    ours = _loss_and_grads(model, lambda: PreferenceObjective(model, settings)(batch))
    compute = trl_loss(model, tokenizer, batch, base, tmp_path)
    theirs = _loss_and_grads(compute.trainer.model, compute)
    _assert_same(ours, theirs)


def test_conservative_dpo_matches_trl_dpo_on_the_pairs_both_ways_round(lora_and_batch, tmp_path):
    """Conservative DPO is (1 - ε) × DPO on the pairs + ε × DPO on the pairs
    with their labels flipped (TRL's DPOTrainer has no cDPO loss of its own;
    its robust and EXO losses are other formulas)."""
    model, tokenizer, batch, base = lora_and_batch
    epsilon = 0.2
    ours = _loss_and_grads(model, lambda: PreferenceObjective(
        model, PreferenceSettings(loss="cdpo", beta=0.1, label_smoothing=epsilon))(batch))
    as_labelled = _dpo_loss(model, tokenizer, batch, base, tmp_path, loss_type="sigmoid", beta=0.1)
    flipped = _dpo_loss(model, tokenizer, batch, base, tmp_path, loss_type="sigmoid", beta=0.1, swap=True)
    flipped.trainer.model = as_labelled.trainer.model  # one model, scored both ways round
    theirs = _loss_and_grads(as_labelled.trainer.model, lambda: (1 - epsilon) * as_labelled() + epsilon * flipped())
    _assert_same(ours, theirs)


def test_the_reference_is_the_base_model_with_the_adapter_off(lora_and_batch):
    """No second model: DPO's rewards are the log-ratio against the same
    weights with the adapter switched off, so a zeroed adapter scores 0."""
    model, _, batch, _ = lora_and_batch
    objective = PreferenceObjective(model, PreferenceSettings(loss="dpo"))
    objective(batch)
    assert abs(objective.take_metrics()["reward_margin"]) > 1e-3
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.zero_()
    loss = objective(batch)
    assert objective.take_metrics() == {"rewards_chosen": 0.0, "rewards_rejected": 0.0, "reward_margin": 0.0,
                                        "reward_accuracy": 0.0}
    assert float(loss.detach()) == pytest.approx(0.6931472)  # -log σ(0)


COMPLETIONS = [UnpairedCompletion(prompt=p.prompt, completion=reply, desirable=desirable, system=p.system, row=i)
               for i, (p, reply, desirable) in enumerate(
                   [(PAIRS[0], PAIRS[0].chosen, True), (PAIRS[1], PAIRS[1].rejected, False),
                    (PAIRS[2], PAIRS[2].chosen, True), (PAIRS[0], PAIRS[0].rejected, False)], start=1)]


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.7)])
def test_kto_loss_and_lora_gradients_match_trl(weights, lora_and_batch, tmp_path):
    """Our KTO (mismatched twins, z₀, weighted losses) against TRL's KTOTrainer.compute_loss on the same
    token ids: the completions with their labels and, as its KL_ sequences, our mismatched twins."""
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    model, tokenizer, _, base = lora_and_batch
    items, _ = tokenize_completions(COMPLETIONS, tokenizer, max_length=64)
    batch = collate_unpaired(items, pad_token_id=tokenizer.pad_token_id)
    desirable_weight, undesirable_weight = weights
    settings = PreferenceSettings(loss="kto", beta=0.3, desirable_weight=desirable_weight,
                                  undesirable_weight=undesirable_weight)
    # A random adapter scores the mismatched replies below the reference, and z₀ is clamped at 0: a few
    # steps up their likelihood make the KL term live.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    twins = {key: batch[f"kl_{key}"] for key in ("input_ids", "attention_mask", "labels")}
    for _ in range(3):
        logps, labelled = token_logps(model, twins)
        (-(logps * labelled).sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(KTOObjective(model, settings).scores(batch)[1]["kl"]) > 0.01
    ours = _loss_and_grads(model, lambda: KTOObjective(model, settings)(batch))

    dataset = Dataset.from_list([{"prompt": c.prompt, "completion": c.completion, "label": c.desirable}
                                 for c in COMPLETIONS])
    args = KTOConfig(beta=0.3, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                     **_common(tmp_path) | {"per_device_train_batch_size": len(COMPLETIONS)})
    trainer = _same_adapter(KTOTrainer(model=base(), args=args, train_dataset=dataset, processing_class=tokenizer,
                                       peft_config=_lora_config()), model)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != -100).long(), "label": batch["desirable"].long(),
              "KL_input_ids": batch["kl_input_ids"], "KL_attention_mask": batch["kl_attention_mask"],
              "KL_completion_mask": (batch["kl_labels"] != -100).long()}
    theirs = _loss_and_grads(trainer.model, lambda: trainer.compute_loss(trainer.model, inputs))
    _assert_same(ours, theirs)
