"""Text generation shared by quantization reports, evaluation and the playground.

Prompts are wrapped in the tokenizer's chat template (a user turn, after
an optional system turn) when it has one, so an instruction-tuned model
sees what it was trained on; without a template the prompt is used as is.
Greedy decoding by default (``temperature=0``), so before/after comparisons
are deterministic.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator


def encode_messages(tokenizer, messages: list[dict]):
    """A conversation ({"role", "content"} turns) ready for ``generate``:
    through the tokenizer's chat template with the assistant's turn opened,
    or, without a template, the turns' text one after another."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # the template already starts with whatever special tokens it wants
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)
    return encode_text(tokenizer, "\n\n".join(turn["content"] for turn in messages))


def encode_text(tokenizer, text: str):
    """Plain text as the model's prompt, no template (a completion)."""
    return tokenizer(text, return_tensors="pt")


def _encode(tokenizer, prompt: str, system_prompt: str | None):
    return encode_messages(tokenizer, ([{"role": "system", "content": system_prompt}] if system_prompt else [])
                           + [{"role": "user", "content": prompt}])


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
    return _reply(model, tokenizer, _encode(tokenizer, prompt, system_prompt), max_new_tokens=max_new_tokens,
                  temperature=temperature, top_p=top_p)


def generate_reply(model, tokenizer, messages: list[dict], *, max_new_tokens: int) -> str:
    """The model's greedy reply to a conversation ({"role", "content"} turns)."""
    return _reply(model, tokenizer, encode_messages(tokenizer, messages), max_new_tokens=max_new_tokens,
                  temperature=0.0, top_p=1.0)


def _reply(model, tokenizer, inputs, *, max_new_tokens: int, temperature: float, top_p: float) -> str:
    import torch

    with torch.no_grad():
        output = model.generate(**_generate_kwargs(model, tokenizer, inputs, max_new_tokens=max_new_tokens,
                                                   temperature=temperature, top_p=top_p))
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def generate_replies(model, tokenizer, prompts: list[str], *, max_new_tokens: int,
                     on_step=lambda done, total: None) -> list[list[int]]:
    """Greedy replies to several prompts in one batched ``generate`` call (left
    padding): one decoding step serves every prompt, where answering them one
    by one costs a step each. Returns each reply's new token ids, up to its
    end token. ``on_step(done, max_new_tokens)`` is called after every step."""
    import torch
    from transformers import StoppingCriteria

    class _Steps(StoppingCriteria):  # never stops generation: it counts the steps
        def __init__(self):
            self.done = 0

        def __call__(self, input_ids, scores, **kwargs):
            self.done += 1
            on_step(self.done, max_new_tokens)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    if getattr(tokenizer, "chat_template", None):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                               add_generation_prompt=True) for p in prompts]
        special = False  # the template already starts with whatever special tokens it wants
    else:
        texts, special = list(prompts), True
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    try:  # left padding, and a pad token borrowed from the end token where there is none, for this call only
        tokenizer.padding_side, tokenizer.pad_token = "left", pad if pad is not None else tokenizer.eos_token
        pad_id = tokenizer.pad_token_id
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=special)
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
    kwargs = _generate_kwargs(model, tokenizer, inputs, max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0)
    kwargs["pad_token_id"] = pad_id
    with torch.no_grad():
        output = model.generate(**kwargs, stopping_criteria=[_Steps()])
    ends = _end_token_ids(model, tokenizer) | {pad_id}
    replies = []
    for row in output[:, inputs["input_ids"].shape[1]:].tolist():
        cut = next((i for i, token in enumerate(row) if token in ends), len(row))
        replies.append(row[:cut])
    return replies


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


# Tokens that open a chat turn in the common template families: a vocabulary
# holding one of them belongs to a chat model, whose prompts need its template.
CHAT_MARKERS = ("<|im_start|>", "<|start_header_id|>", "<start_of_turn>", "[INST]", "<|user|>")


def empty_reply_reason(tokenizer, new_token_ids: list[int], end_token_ids: set[int]) -> str:
    """Why a reply decoded to no text: what the model produced, and what
    about the prompt likely made it do so. Shown to the user in place of a
    blank answer."""
    if not new_token_ids:
        return "the model produced no tokens"
    first = new_token_ids[0]
    spelled = tokenizer.convert_ids_to_tokens(new_token_ids[:8])
    if first in end_token_ids:
        reason = f"the model ended its turn at once: its first token was the end token {spelled[0]!r}"
    elif not tokenizer.decode(new_token_ids, skip_special_tokens=True).strip():
        reason = f"the model produced only special or blank tokens ({', '.join(map(repr, spelled))})"
    else:
        reason = "the reply was empty"
    if not getattr(tokenizer, "chat_template", None):
        vocab = tokenizer.get_vocab()
        markers = [marker for marker in CHAT_MARKERS if marker in vocab]
        if markers:
            reason += (f"; the tokenizer has no chat template although its vocabulary has chat tokens "
                       f"({markers[0]}), so the prompt went in as plain text: a template mismatch")
        else:
            reason += "; the tokenizer has no chat template, so the prompt went in as plain text"
    return reason


def _end_token_ids(model, tokenizer) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [] if ids is None else [ids])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


class PieceStreamer:
    """``generate``'s streamer for a reply shown as it is written: each new
    token's text goes to ``on_piece`` as soon as it decodes. transformers'
    TextStreamer holds text back to the end of a word, so its first piece
    comes a decoding step or more after the first token. Text ending in an
    incomplete UTF-8 character (U+FFFD) waits for the token that completes
    it. Decoding restarts after each line end, as TextStreamer's does, so a
    step decodes one line rather than the whole reply."""

    def __init__(self, tokenizer, on_piece):
        self.tokenizer, self.on_piece = tokenizer, on_piece
        self.prompt_seen = False  # generate's first put is the prompt
        self.tokens: list[int] = []  # since the last line end
        self.shown = 0  # characters of their text already passed on

    def put(self, value) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError("PieceStreamer streams one reply at a time (batch size 1)")
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        self._show(text)

    def end(self) -> None:
        self._show(self.tokenizer.decode(self.tokens, skip_special_tokens=True))
        self.tokens, self.shown = [], 0

    def _show(self, text: str) -> None:
        piece = text[self.shown:]
        self.shown = len(text)
        if text.endswith("\n"):
            self.tokens, self.shown = [], 0
        if piece:
            self.on_piece(piece)


class ReplyStream:
    """The reply in text pieces as they are generated, then ``empty_reason``:
    None when the reply has text, else why it has none.

    ``run(on_piece)`` generates in the calling thread and hands each piece
    to ``on_piece`` (the workers: no thread between the model and the
    sender). Iterating it generates in a background thread instead; an
    error in generation is raised from the iteration, after the pieces
    already produced."""

    def __init__(self, model, tokenizer, inputs, kwargs):
        self.model, self.tokenizer, self.inputs, self.kwargs = model, tokenizer, inputs, kwargs
        self.new_token_ids: list[int] = []
        self.text = ""

    def run(self, on_piece) -> None:
        import torch

        def piece(text: str) -> None:
            self.text += text
            on_piece(text)

        with torch.no_grad():
            output = self.model.generate(**self.kwargs, streamer=PieceStreamer(self.tokenizer, piece))
        self.new_token_ids = output[0, self.prompt_tokens:].tolist()

    def __iter__(self) -> Iterator[str]:
        pieces: queue.SimpleQueue = queue.SimpleQueue()
        finished = object()  # put after the last piece, or after a failure
        failure: list[BaseException] = []

        def work():
            try:
                self.run(pieces.put)
            except BaseException as exc:  # handed to the consuming thread below
                failure.append(exc)
            finally:
                pieces.put(finished)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        # timeout: a generation thread stuck for ten minutes must not leave the caller waiting forever
        while (piece := pieces.get(timeout=600)) is not finished:
            yield piece
        thread.join()
        if failure:
            raise failure[0]

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])

    @property
    def completion_tokens(self) -> int:
        """New tokens generated (known once the generation has ended)."""
        return len(self.new_token_ids)

    @property
    def empty_reason(self) -> str | None:
        if self.text.strip():
            return None
        return empty_reply_reason(self.tokenizer, self.new_token_ids, _end_token_ids(self.model, self.tokenizer))


def generate_stream(model, tokenizer, prompt: str, *, max_new_tokens: int, temperature: float = 0.0,
                    top_p: float = 1.0, system_prompt: str | None = None) -> ReplyStream:
    """The reply as a ReplyStream: iterate it for the text pieces, then read
    its ``empty_reason``."""
    return stream_inputs(model, tokenizer, _encode(tokenizer, prompt, system_prompt), max_new_tokens=max_new_tokens,
                         temperature=temperature, top_p=top_p)


def stream_inputs(model, tokenizer, inputs, *, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                  stop: list[str] | None = None) -> ReplyStream:
    """The continuation of already encoded ``inputs`` (``encode_messages``,
    ``encode_text``) as a ReplyStream; generation ends early at any of the
    ``stop`` strings (the text up to and including it is produced)."""
    kwargs = _generate_kwargs(model, tokenizer, inputs, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p)
    if stop:
        kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)  # transformers' StopStringCriteria
    return ReplyStream(model, tokenizer, inputs, kwargs)
