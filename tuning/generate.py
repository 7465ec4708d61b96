"""Text generation shared by quantization reports, evaluation and the playground.

Prompts are wrapped in the tokenizer's chat template (a user turn, after
an optional system turn) when it has one, so an instruction-tuned model
sees what it was trained on; without a template the prompt is used as is.
Greedy decoding by default (``temperature=0``), so before/after comparisons
are deterministic.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator


def _encode(tokenizer, prompt: str, system_prompt: str | None):
    if getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # the template already starts with whatever special tokens it wants
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)
    text = f"{system_prompt}\n\n{prompt}" if system_prompt else prompt
    return tokenizer(text, return_tensors="pt")


def _generate_kwargs(model, tokenizer, inputs, *, max_new_tokens: int, temperature: float, top_p: float) -> dict:
    device = next(model.parameters()).device
    kwargs = {key: value.to(device) for key, value in inputs.items()}
    kwargs.update(max_new_tokens=max_new_tokens,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        # greedy; unset sampling defaults a generation_config may carry, which
        # would otherwise trigger "not valid when do_sample=False" warnings
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def generate_text(model, tokenizer, prompt: str, *, max_new_tokens: int, temperature: float = 0.0,
                  top_p: float = 1.0, system_prompt: str | None = None) -> str:
    """The model's reply to ``prompt`` (new tokens only, special tokens removed)."""
    import torch

    inputs = _encode(tokenizer, prompt, system_prompt)
    with torch.no_grad():
        output = model.generate(**_generate_kwargs(model, tokenizer, inputs, max_new_tokens=max_new_tokens,
                                                   temperature=temperature, top_p=top_p))
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def generation_speed(model, tokenizer, prompt: str, max_new_tokens: int) -> float:
    """Greedy generation speed in new tokens per second (prompt processing
    included, one short warm-up run excluded)."""
    import torch

    inputs = _encode(tokenizer, prompt, None)
    kwargs = _generate_kwargs(model, tokenizer, inputs, max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0)
    with torch.no_grad():
        model.generate(**{**kwargs, "max_new_tokens": 2})  # first call pays one-off costs (kernel selection, caches)
        started = time.perf_counter()
        output = model.generate(**kwargs)
        elapsed = time.perf_counter() - started
    new_tokens = output.shape[1] - inputs["input_ids"].shape[1]
    return new_tokens / max(elapsed, 1e-9)


def generate_stream(model, tokenizer, prompt: str, *, max_new_tokens: int, temperature: float = 0.0,
                    top_p: float = 1.0, system_prompt: str | None = None) -> Iterator[str]:
    """Yield the reply in text pieces as they are generated (generation runs
    in a background thread; the pieces come through transformers'
    TextIteratorStreamer). An error in generation is raised here, after the
    pieces already produced."""
    import torch
    from transformers import TextIteratorStreamer

    inputs = _encode(tokenizer, prompt, system_prompt)
    # timeout: a generation thread that died must not leave the caller waiting forever
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    kwargs = _generate_kwargs(model, tokenizer, inputs, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p)
    failure: list[BaseException] = []

    def work():
        try:
            with torch.no_grad():
                model.generate(**kwargs, streamer=streamer)
        except BaseException as exc:  # handed to the consuming thread below
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    for piece in streamer:
        if piece:
            yield piece
    thread.join()
    if failure:
        raise failure[0]
