"""``sft.tokenize_example`` for a batch of rows at once, with the same result.

Counting the tokens of a whole dataset (``stats.token_stats``, what an
analysis job runs) one row at a time costs a template render per part, a
tokenizer call and a few Python lists per row, and the per-call overheads
dominate on short rows. Here a batch of rows is rendered with one
``apply_chat_template`` call per kind of part (whole conversations; the
prompts before each trained reply, with the generation prompt; the
conversations through each earlier reply), the whole texts are tokenized in
one fast-tokenizer call with offsets, and each reply's tokens are found with
``sft``'s own rule (``sft.label_range``). Only one batch of encodings is held
at a time.

The prompt is still rendered on its own rather than inferred from the whole
render: that render is what proves the template's prefix property for the
row, and a template may render the prompt differently once the reply
follows. A row that breaks it, a template that refuses a batch, a
conversation that opens with a trained reply, and slow tokenizers (no
offsets) go through ``sft.tokenize_example`` itself, so they raise the same
error naming the same row, or give the same tokens.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator

from tuning.data.readers import Example
from tuning.data.sft import (IGNORE_INDEX, TokenizedExample, ensure_chat_template, label_range, reply_span,
                             tokenize_example)

__all__ = ["BATCH_ROWS", "tokenize_batched"]

BATCH_ROWS = 1000  # rows rendered and tokenized per call: the overheads vanish well before this


def tokenize_batched(examples: Iterable[Example], tokenizer, *, max_length: int = sys.maxsize, loss_on_prompt: bool,
                     file: str = "", batch_rows: int = BATCH_ROWS) -> Iterator[list[TokenizedExample]]:
    """For each batch of ``batch_rows`` examples, the list ``sft.tokenize_example`` gives for them (in order)."""
    ensure_chat_template(tokenizer)
    one_by_one = not getattr(tokenizer, "is_fast", False)  # slow tokenizers have no offsets
    rows = iter(examples)
    while batch := list(itertools.islice(rows, batch_rows)):
        if one_by_one:
            yield [_alone(e, tokenizer, max_length, loss_on_prompt, file) for e in batch]
        else:
            yield _batch(batch, tokenizer, max_length, loss_on_prompt, file)


def _alone(example: Example, tokenizer, max_length: int, loss_on_prompt: bool, file: str) -> TokenizedExample:
    return tokenize_example(example, tokenizer, max_length=max_length, loss_on_prompt=loss_on_prompt, file=file)


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


def _cut(ids: list[int], labels: list[int], max_length: int, row: int | None) -> TokenizedExample:
    return TokenizedExample(input_ids=ids[:max_length], labels=labels[:max_length], truncated=len(ids) > max_length,
                            row=row)


def _batch(batch: list[Example], tokenizer, max_length: int, loss_on_prompt: bool,
           file: str) -> list[TokenizedExample]:
    chats = [[{"role": m.role, "content": m.content} for m in e.messages] for e in batch]
    # An empty conversation renders in a batch but is refused alone: the refusal (or the refusing row) decides.
    texts = None if not all(chats) else _render(tokenizer, chats, False)
    if texts is None:
        return [_alone(e, tokenizer, max_length, loss_on_prompt, file) for e in batch]
    if loss_on_prompt:
        encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return [_cut(list(ids), list(ids), max_length, e.row) for ids, e in zip(encoded, batch)]
    spans = _reply_spans(batch, chats, texts, tokenizer)
    if spans is None:
        return [_alone(e, tokenizer, max_length, loss_on_prompt, file) for e in batch]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    out = []
    for example, row_spans, ids, offsets in zip(batch, spans, encoded["input_ids"], encoded["offset_mapping"]):
        if row_spans is None:  # sft refuses the row (or renders it itself): let it say so
            out.append(_alone(example, tokenizer, max_length, loss_on_prompt, file))
            continue
        ids = list(ids)
        labels = [IGNORE_INDEX] * len(ids)
        for span in row_spans:
            first, last = label_range(offsets, span)
            labels[first:last] = ids[first:last]
        out.append(_cut(ids, labels, max_length, example.row))
    return out


def _reply_spans(batch: list[Example], chats: list[list[dict]], texts: list[str],
                 tokenizer) -> list[list[tuple[int, int]] | None] | None:
    """Per row, the character spans of its trained replies (``sft._assistant_spans``), None for a row
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
