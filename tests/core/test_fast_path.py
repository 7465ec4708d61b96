"""The fast path (packed batches, tokenization cache) computes what the plain
path computes: the same loss and gradients for every method that packs,
and the same items from the cache as from tokenizing."""

import math
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.core.test_methods import ROWS, biased_model, lora_sources  # noqa: F401  (fixtures)
from tuning.attention import use_segment_attention
from tuning.data.cache import load_task_data_cached
from tuning.data.packing import collate_packed, packing_works
from tuning.data.sft import collate
from tuning.data.tasks import load_task_data
from tuning.loss import fused_loss_works, fused_next_token_loss, next_token_loss, selects_logits, task_model
from tuning.methods import METHODS, MethodContext
from tuning.models import load_tokenizer

# The first row of each method in test_methods; methods that never pack (prompt methods, the ladder) are left out.
PACKING_METHODS = {method: (params, lr) for method, params, lr in reversed(list(ROWS.values()))
                   if METHODS[method].packs_rows}


@pytest.fixture(scope="module")
def items(tiny_model, tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("data") / "mixed.jsonl"
    rows = [{"instruction": "Say hi." * (1 + i % 5), "output": "Hello there, " * (1 + (i * 7) % 11)} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_task_data("sft", path, tokenizer=load_tokenizer(str(tiny_model)), max_length=96).items


@pytest.mark.parametrize("attention", ["sdpa", "sdpa_segments"])
@pytest.mark.parametrize("method_name", sorted(PACKING_METHODS))
def test_packed_batch_gives_the_padded_loss_and_gradients(method_name, attention, items, tiny_model,
                                                          biased_model):  # noqa: F811
    """Packed rows (with transformers' block mask or per-example attention) and
    logits computed only where a label is give the plain padded path's loss
    and gradients."""
    method = METHODS[method_name]
    params, _ = PACKING_METHODS[method_name]
    torch.manual_seed(0)
    base = biased_model if method_name == "bitfit" else tiny_model
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = method.prepare(model, method.params(**params), MethodContext(total_steps=4, base_model=str(base)))
    model.eval()  # same dropout masks cannot be drawn twice; the layouts are what is compared
    if attention == "sdpa_segments":
        assert use_segment_attention(model)
    assert packing_works(model, "cpu")
    assert selects_logits(model)

    def loss_and_grads(compute_loss, inputs):
        model.zero_grad(set_to_none=True)
        loss = compute_loss(inputs)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    def plain(inputs):  # the task's loss: AdaLoRA's wrapper adds its penalty to the loss it returns
        return task_model(model)(**inputs, use_cache=False).loss

    def selective(inputs):
        return next_token_loss(model, inputs)

    padded = collate(items, pad_token_id=0)
    packed = collate_packed(items, max_length=96, pad_token_id=0,
                            context_tokens=math.inf if attention == "sdpa_segments" else 4096.0)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()
    padded_loss, padded_grads = loss_and_grads(plain, padded)
    assert padded_grads
    def fused(inputs):
        return fused_next_token_loss(model, inputs)

    assert fused_loss_works(model, "cpu")
    paths = [(plain, packed), (selective, packed), (selective, padded), (fused, packed), (fused, padded)]
    for compute_loss, inputs in paths:
        loss, grads = loss_and_grads(compute_loss, inputs)
        assert loss == pytest.approx(padded_loss, rel=1e-5), compute_loss.__name__
        assert grads.keys() == padded_grads.keys()
        for name, grad in padded_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=5e-4, atol=1e-5,
                                       msg=lambda m: f"{compute_loss.__name__} {name}: {m}")


def test_segment_attention_matches_sdpa_wherever_rows_are_not_packed(tiny_model):
    """Generation and padded batches (positions that do not restart at 0) go
    through plain sdpa with its mask: left-padded greedy generation gives the
    same tokens with either attention."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    prompts = dict(input_ids=torch.tensor([[0, 0, 5, 6], [5, 6, 7, 8]]),
                   attention_mask=torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))
    before = model.generate(**prompts, max_new_tokens=4, do_sample=False)
    assert use_segment_attention(model) and model.config._attn_implementation == "sdpa_segments"
    after = model.generate(**prompts, max_new_tokens=4, do_sample=False)
    assert torch.equal(before, after)


def test_second_load_hits_the_cache_with_identical_items(tiny_model, memorisable_jsonl, tmp_path):
    tokenizer = load_tokenizer(str(tiny_model))
    kwargs = dict(tokenizer=tokenizer, max_length=128, cache_dir=tmp_path / "cache")
    first, status = load_task_data_cached("sft", memorisable_jsonl, **kwargs)
    assert status == "stored" and len(list((tmp_path / "cache").iterdir())) == 1
    second, status = load_task_data_cached("sft", memorisable_jsonl, **kwargs)
    assert status == "hit" and second == first  # dataclasses: every item, count and flag

    # Anything the tokens depend on is part of the key.
    assert load_task_data_cached("sft", memorisable_jsonl, **{**kwargs, "max_length": 100})[1] == "stored"
    assert load_task_data_cached("sft", memorisable_jsonl, loss_on_prompt=True, **kwargs)[1] == "stored"
    copy = tmp_path / "copy.jsonl"
    shutil.copy(memorisable_jsonl, copy)
    assert load_task_data_cached("sft", copy, **kwargs)[1] == "hit"  # content, not the path
    copy.write_text(copy.read_text().replace("Blue.", "Azure."))
    assert load_task_data_cached("sft", copy, **kwargs)[1] == "stored"
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    assert load_task_data_cached("sft", memorisable_jsonl, **kwargs)[1] == "stored"


def test_a_corrupt_cache_entry_is_rebuilt(tiny_model, memorisable_jsonl, tmp_path):
    kwargs = dict(tokenizer=load_tokenizer(str(tiny_model)), max_length=64, cache_dir=tmp_path)
    first, _ = load_task_data_cached("sft", memorisable_jsonl, **kwargs)
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    again, status = load_task_data_cached("sft", memorisable_jsonl, **kwargs)
    assert status == "stored" and again == first
    assert load_task_data_cached("sft", memorisable_jsonl, **kwargs)[1] == "hit"


def test_classification_and_pretraining_items_round_trip(tiny_model, tmp_path):
    from tests.core.test_task_training import REVIEWS
    from tuning.models import prepare_bundled_encoder
    from tests.tiny_model import CACHE

    encoder = prepare_bundled_encoder(CACHE / "all-minilm-l6-v2")
    csv = tmp_path / "reviews.csv"
    csv.write_text("text,label\n" + "".join(f'"{text}",{label}\n' for text, label in REVIEWS))
    kwargs = dict(tokenizer=load_tokenizer(str(encoder)), max_length=16, cache_dir=tmp_path / "cache")
    first, _ = load_task_data_cached("classify", csv, **kwargs)
    second, status = load_task_data_cached("classify", csv, **kwargs)
    assert status == "hit" and second == first and first.label2id

    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(f"Paragraph {i} hums at four hundred and forty hertz." for i in range(5)))
    kwargs["tokenizer"] = load_tokenizer(str(tiny_model))  # the encoder has no end-of-sequence token
    first, _ = load_task_data_cached("pretrain", text, **kwargs)
    second, status = load_task_data_cached("pretrain", text, **kwargs)
    assert status == "hit" and second == first


def test_bf16_frozen_base_computes_what_autocast_computes(tiny_model):
    from tuning.train_model import store_frozen_base_in_bf16

    lora = METHODS["lora"]
    params = lora.params(rank=8, dropout=0.0)
    torch.manual_seed(0)
    model = lora.prepare(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32), params, MethodContext())
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    before = loss_and_grads()
    assert store_frozen_base_in_bf16(model, lora, params, "fp32") == 0  # only where autocast casts anyway
    assert store_frozen_base_in_bf16(model, lora, lora.params(rank=8, use_dora=True), "bf16") == 0
    converted = store_frozen_base_in_bf16(model, lora, params, "bf16")
    assert converted == 2 * 7  # q, k, v, o, gate, up, down in both layers; the tied head stays fp32
    assert model.get_input_embeddings().weight.dtype == torch.float32
    after = loss_and_grads()
    assert after[0] == pytest.approx(before[0], rel=1e-6)
    for name, grad in before[1].items():
        torch.testing.assert_close(after[1][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_fused_loss_is_refused_where_the_head_changes_the_logits():
    """Gemma 2 caps its logits (final_logit_softcapping): the fused loss,
    which applies the plain head, must not pass the probe; the labelled-logits
    path, which runs the model's own head, still gives the model's loss."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                           final_logit_softcapping=0.5, initializer_range=0.5))
    assert not fused_loss_works(model, "cpu")
    inputs = {"input_ids": torch.randint(0, 128, (2, 9)), "labels": torch.randint(0, 128, (2, 9))}
    inputs["labels"][:, :4] = -100
    assert next_token_loss(model, inputs).item() == pytest.approx(model(**inputs).loss.item(), rel=1e-5)


def test_examples_of_similar_length_share_one_call_and_see_only_themselves():
    """Segment attention pads examples of similar length into one batched call;
    every example still gets exactly its own causal attention, and gradients."""
    from types import SimpleNamespace

    from tuning.attention import _groups, segment_attention

    lengths = [7, 8, 3, 8]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    bounds = [(s, s + n) for s, n in zip(starts, lengths)]
    assert _groups(bounds) == [[(7, 15), (18, 26), (0, 7)], [(15, 18)]]

    torch.manual_seed(0)
    total = sum(lengths)
    query = torch.randn(1, 4, total, 8, requires_grad=True)
    key, value = (torch.randn(1, 2, total, 8, requires_grad=True) for _ in range(2))
    position_ids = torch.tensor([[p for n in lengths for p in range(n)]])
    module = SimpleNamespace(num_key_value_groups=2)
    out, _ = segment_attention(module, query, key, value, None, scaling=0.3, position_ids=position_ids)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    got = [t.grad.clone() for t in (query, key, value)]

    for t in (query, key, value):
        t.grad = None
    expected = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], scale=0.3, is_causal=True, enable_gqa=True)
        for s, e in bounds], dim=2).transpose(1, 2)
    (expected * weights).sum().backward()
    torch.testing.assert_close(out, expected)
    for grad, t in zip(got, (query, key, value)):
        torch.testing.assert_close(grad, t.grad)


def test_auto_precision_on_a_cpu_is_bf16_only_where_the_cpu_computes_it_natively():
    # Emulated bf16 (an AVX2-only CPU) made a 135M model's step ~30x slower than fp32.
    import torch

    from tuning.train_model import cpu_has_native_bf16, device_and_autocast

    if torch.cuda.is_available():
        pytest.skip("auto picks the GPU's precision here")
    assert device_and_autocast("auto").precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert device_and_autocast("bf16").precision == "bf16"  # asked for by name: as asked
