"""Before/after comparison of a quantized model with its source.

The "after" model is reloaded from the output directory with the scheme's
stock loader, exactly as a user would load it (GGUF through transformers'
``gguf_file=``, which dequantizes to float), so the report measures the
files that were written, not the in-memory model that wrote them. The two
models are measured one after the other, never held together.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from pathlib import Path

from tuning.quantize.common import Cancelled, dir_size, weights_size

EVAL_BATCH_SIZE = 4


def _eval_items(config, tokenizer) -> list:
    from tuning.data.tasks import load_task_data

    if not config.eval_dataset_path:
        return []
    data = load_task_data("sft", config.eval_dataset_path, tokenizer=tokenizer, max_length=config.eval_max_length)
    return data.items[:config.eval_rows]


def _measure(model, tokenizer, items: list, config, step: Callable[[], None]) -> dict:
    from tuning.data.tasks import collate_for_task
    from tuning.evaluate import evaluate
    from tuning.generate import generate_text, generation_speed

    device = str(next(model.parameters()).device)
    model.eval()
    result = {"perplexity": None, "eval_loss": None}
    if items:
        collate = collate_for_task("sft", pad_token_id=tokenizer.pad_token_id)
        chunks = (items[i:i + EVAL_BATCH_SIZE] for i in range(0, len(items), EVAL_BATCH_SIZE))
        scores = evaluate(model, (collate(c) for c in chunks), device=device, autocast=contextlib.nullcontext,
                          task="sft")
        result.update(perplexity=scores["perplexity"], eval_loss=scores["eval_loss"])
    step()
    result["tokens_per_s"] = round(generation_speed(model, tokenizer, config.prompts[0], config.max_new_tokens), 2)
    step()
    answers = []
    for prompt in config.prompts:
        answers.append(generate_text(model, tokenizer, prompt, max_new_tokens=config.max_new_tokens))
        step()
    result["answers"] = answers
    return result


def build_report(*, config, scheme, source_dir: Path, out_dir: Path,
                 progress: Callable[[int, int], None], should_stop: Callable[[], bool]) -> dict:
    """Size, perplexity (None without an eval dataset), generation speed and
    answers, before and after, as JSON-able data."""
    import torch
    from transformers import AutoModelForCausalLM

    from tuning.models import load_tokenizer

    total = 2 * (3 + len(config.prompts))  # per model: load, perplexity, speed, one per prompt
    done = 0

    def step():
        nonlocal done
        done += 1
        progress(done, total)
        if should_stop():
            raise Cancelled

    device = "cuda" if scheme.needs_gpu else "cpu"  # bitsandbytes outputs only load on a GPU
    tokenizer = load_tokenizer(str(source_dir), trust_remote_code=config.trust_remote_code)
    items = _eval_items(config, tokenizer)
    before_model = AutoModelForCausalLM.from_pretrained(source_dir, dtype="auto", use_safetensors=True,
                                                        trust_remote_code=config.trust_remote_code).to(device)
    before_dtype = str(next(before_model.parameters()).dtype).removeprefix("torch.")
    step()
    before = _measure(before_model, tokenizer, items, config, step)
    del before_model
    gc.collect()

    after_tokenizer = load_tokenizer(str(out_dir), trust_remote_code=config.trust_remote_code)
    after_model = scheme.load(out_dir, trust_remote_code=config.trust_remote_code)
    step()
    after = _measure(after_model, after_tokenizer, items, config, step)
    del after_model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()

    size_before, size_after = weights_size(source_dir), weights_size(out_dir)
    return {
        "scheme": scheme.name, "format": scheme.format, "dtype_before": before_dtype,
        "size_bytes_before": size_before, "size_bytes_after": size_after,
        "dir_bytes_before": dir_size(source_dir), "dir_bytes_after": dir_size(out_dir),
        "size_ratio": round(size_after / size_before, 4) if size_before else None,
        "eval_rows": len(items),
        "perplexity_before": before["perplexity"], "perplexity_after": after["perplexity"],
        "eval_loss_before": before["eval_loss"], "eval_loss_after": after["eval_loss"],
        "tokens_per_s_before": before["tokens_per_s"], "tokens_per_s_after": after["tokens_per_s"],
        "max_new_tokens": config.max_new_tokens,
        "answers": [{"prompt": prompt, "before": b, "after": a}
                    for prompt, b, a in zip(config.prompts, before["answers"], after["answers"])],
    }
