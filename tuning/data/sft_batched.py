"""What ``sft.tokenize_example`` gives a batch of rows, counted without
tokenizing them one by one: each row's length and which tokens carry loss.

Counting the tokens of a whole dataset (``stats.token_stats``, what an
analysis job runs) one row at a time costs two template renders, a
tokenizer call and a few Python lists per row, and the per-call overheads
dominate on short rows. Here a batch of rows is rendered with one
``apply_chat_template`` call per kind of part (whole conversations; the
prompts before each trained reply, with the generation prompt; the
conversations through each earlier reply), the whole texts go to the fast
tokenizer's backend in one ``encode_batch`` call, and each reply's tokens
are found with ``sft``'s own rule (``sft.label_range``), asking the
encoding for the two tokens at a span's edges instead of building every
token's offsets in Python. Only one batch of encodings is held at a time.

The prompt is still rendered on its own rather than inferred from the whole
render: that render is what proves the template's prefix property for the
row (a template may render the prompt differently once the reply follows,
or depending on the reply's content), and inferring it would count such
rows silently wrong where ``sft`` refuses them. A row that breaks the
property, a template that refuses a batch, an empty conversation or one
that opens with a trained reply, and tokenizers without a fast backend go
through ``sft.tokenize_example`` itself, so they raise the same error
naming the same row, or count the same tokens.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tuning.data.readers import Example
from tuning.data.sft import IGNORE_INDEX, ensure_chat_template, label_range, reply_span, tokenize_example

__all__ = ["BATCH_ROWS", "RowCount", "count_batched"]

BATCH_ROWS = 1000  # rows rendered and tokenized per call: the per-call overheads vanish well before this


@dataclass(frozen=True)
class RowCount:
    """A row as ``sft.tokenize_example`` tokenizes it, uncut: its length in tokens and the token ranges
    [first, last) whose labels are kept (ascending, apart)."""

    length: int
    trained: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, labels: list[int]) -> "RowCount":
        runs, start = [], None
        for index, label in enumerate([*labels, IGNORE_INDEX]):
            if label != IGNORE_INDEX and start is None:
                start = index
            elif label == IGNORE_INDEX and start is not None:
                runs.append((start, index))
                start = None
        return cls(len(labels), tuple(runs))

    def within(self, max_length: int) -> tuple[int, bool]:
        """Among the first ``max_length`` tokens (what training keeps): how many carry loss, and whether
        one past the first does (``sft.has_labels``: the first token is never predicted)."""
        loss = sum(max(0, min(last, max_length) - first) for first, last in self.trained)
        return loss, any(max(first, 1) < min(last, max_length) for first, last in self.trained)


def count_batched(examples: Iterable[Example], tokenizer, *, loss_on_prompt: bool, file: str = "",
                  batch_rows: int = BATCH_ROWS) -> Iterator[list[RowCount]]:
    """For each batch of ``batch_rows`` examples (in order), the RowCount of each."""
    ensure_chat_template(tokenizer)
    backend = _plain_backend(tokenizer)
    rows = iter(examples)
    while batch := list(itertools.islice(rows, batch_rows)):
        if backend is None:
            yield [_alone(e, tokenizer, loss_on_prompt, file) for e in batch]
        else:
            yield _batch(batch, tokenizer, backend, loss_on_prompt, file)


def _plain_backend(tokenizer):
    """The Rust tokenizer behind a fast one, when calling it gives what ``tokenizer(text,
    add_special_tokens=False)`` gives (no truncation or padding set on it, special tokens read as such);
    None otherwise (slow tokenizers have none)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None
    if backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    return backend


def _alone(example: Example, tokenizer, loss_on_prompt: bool, file: str) -> RowCount:
    return RowCount.of(tokenize_example(example, tokenizer, max_length=sys.maxsize, loss_on_prompt=loss_on_prompt,
                                        file=file).labels)


def _render(tokenizer, conversations: list[list[dict]], generation_prompt: bool) -> list[str] | None:
    """Each conversation as template text, or None where the template refuses one of them (the rows then
    go one by one, which names the row)."""
    from jinja2 import TemplateError

    if not conversations:
        return []
    try:
        return tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError:
        return None


def _batch(batch: list[Example], tokenizer, backend, loss_on_prompt: bool, file: str) -> list[RowCount]:
    chats = [[{"role": m.role, "content": m.content} for m in e.messages] for e in batch]
    # An empty conversation renders in a batch but is refused alone: the refusal (or the refusing row) decides.
    texts = _render(tokenizer, chats, False) if all(chats) else None
    spans = texts and (None if loss_on_prompt else _reply_spans(batch, chats, texts, tokenizer))
    if texts is None or (spans is None and not loss_on_prompt):
        return [_alone(e, tokenizer, loss_on_prompt, file) for e in batch]
    out = []
    for index, encoding in enumerate(backend.encode_batch(texts, add_special_tokens=False)):
        length = len(encoding)
        if loss_on_prompt:
            out.append(RowCount(length, ((0, length),) if length else ()))
        elif spans[index] is None:  # sft refuses the row (or renders it itself): let it say so
            out.append(_alone(batch[index], tokenizer, loss_on_prompt, file))
        else:
            ranges = [_token_range(encoding, span, len(texts[index])) for span in spans[index]]
            out.append(RowCount(length, _union(ranges)))
    return out


def _union(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The token ranges as labelling them one after another marks them: empty ones dropped, overlaps joined."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(r for r in ranges if r[1] > r[0]):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return tuple(merged)


def _token_range(encoding, span: tuple[int, int], text_length: int) -> tuple[int, int]:
    """``sft.label_range`` of the encoding's offsets, found from the tokens at the span's two edges and
    checked against their neighbours (what the bisection would settle on, as offsets ascend); the whole
    offsets list only where a check fails (a character no token covers)."""
    first = _edge(encoding, span[0], end_side=True)
    if span[1] < text_length:
        last = _edge(encoding, span[1], end_side=False)
    else:  # through the text's end: every token starts before it
        n = len(encoding)
        last = n if n == 0 or encoding.token_to_chars(n - 1)[0] < span[1] else None
    if first is None or last is None:
        return label_range(encoding.offsets, span)
    return first, last


def _edge(encoding, char: int, *, end_side: bool) -> int | None:
    """The first token whose end lies past ``char`` (``end_side``), or whose start is at or past it."""
    token = encoding.char_to_token(char)
    if token is None:
        return None
    start, end = encoding.token_to_chars(token)
    if not end_side and start < char:
        token += 1
    n = len(encoding)
    if end_side:
        holds = end > char and (token == 0 or encoding.token_to_chars(token - 1)[1] <= char)
    else:
        holds = (token == n or encoding.token_to_chars(token)[0] >= char) and \
            (token == 0 or encoding.token_to_chars(token - 1)[0] < char)
    return token if holds else None


def _reply_spans(batch: list[Example], chats: list[list[dict]], texts: list[str],
                 tokenizer) -> list[list[tuple[int, int]] | None] | None:
    """Per row, the character spans of its trained replies (as ``sft._assistant_spans``), None for a row
    that must go one by one; None for all when the template refuses a prefix of some row."""
    befores, throughs = [], []  # (row, turn) of each prefix to render, and the prefix
    for row, example in enumerate(batch):
        for index, message in enumerate(example.messages):
            if message.role == "assistant" and message.train:
                befores.append(((row, index), chats[row][:index]))
                if index + 1 < len(example.messages):
                    throughs.append(((row, index), chats[row][:index + 1]))
    rendered_before = _render(tokenizer, [chat for _, chat in befores], True)
    rendered_through = _render(tokenizer, [chat for _, chat in throughs], False)
    if rendered_before is None or rendered_through is None:
        return None
    through_of = dict(zip((key for key, _ in throughs), rendered_through))
    spans: list[list[tuple[int, int]] | None] = [[] for _ in batch]
    for ((row, index), chat), before in zip(befores, rendered_before):
        if spans[row] is None:
            continue
        if not chat:  # a reply first: sft renders an empty conversation, which the tokenizer refuses
            spans[row] = None
            continue
        span = reply_span(texts[row], before, through_of.get((row, index), texts[row]))
        spans[row] = None if span is None else spans[row] + [span]
    return spans
