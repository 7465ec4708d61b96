"""Turn conversations into token ids and labels for supervised fine-tuning.

Each conversation is rendered with the tokenizer's chat template, so the
model trains on exactly the format it will be prompted with. Labels are
-100 everywhere except on the assistant turns: their text and the
end-of-turn token the template writes after each (the model must learn to
stop). ``loss_on_prompt`` labels every token instead.

Where an assistant turn lies is found by rendering prefixes of the
conversation: the text up to turn i with the generation prompt ends where
the turn starts, the text through turn i ends where it ends. That works for
any template whose rendering of earlier turns does not change when later
turns follow (the prefix property), which is checked for every turn; a row
whose template breaks it is refused rather than masked wrongly.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from operator import itemgetter

from tuning.data.chat_templates import AUTO, CHAT_TEMPLATES, FALLBACK, use_chat_template
from tuning.data.readers import Example
from tuning.errors import DatasetError

IGNORE_INDEX = -100  # label value that torch's cross-entropy skips

# Used only when a tokenizer ships no chat template of its own (and none was chosen).
FALLBACK_TEMPLATE = CHAT_TEMPLATES[FALLBACK].template


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # the row was longer than max_length and was cut
    row: int | None = None  # 1-based row in the file it came from


def _render(tokenizer, example: Example, upto: int, *, generation_prompt: bool = False, file: str = "") -> str:
    """The conversation's first ``upto`` turns as template text."""
    from jinja2 import TemplateError

    messages = [{"role": m.role, "content": m.content} for m in example.messages[:upto]]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as exc:
        raise DatasetError(f"the base model's chat template refuses this conversation ({exc}); change the "
                           f"turns or choose another base model", file=file, row=example.row,
                           field="messages") from None


def reply_span(text: str, before: str, through: str) -> tuple[int, int] | None:
    """The character span in ``text`` (the whole conversation) of the reply rendered between the prompt
    ``before`` (with the generation prompt) and the conversation ``through`` it, through its end-of-turn
    token but not the whitespace the template puts after it; None where the template breaks the prefix
    property (an earlier part renders differently once later turns follow)."""
    if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
        return None
    return len(before), len(through.rstrip())


def _assistant_spans(tokenizer, example: Example, text: str, file: str) -> list[tuple[int, int]]:
    """Character spans in ``text`` of each trained assistant turn (``reply_span``)."""
    spans = []
    for index, message in enumerate(example.messages):
        if message.role != "assistant" or not message.train:
            continue
        before = _render(tokenizer, example, index, generation_prompt=True, file=file)
        through = text if index + 1 == len(example.messages) else _render(tokenizer, example, index + 1, file=file)
        span = reply_span(text, before, through)
        if span is None:
            raise DatasetError(f"the base model's chat template renders turn {index} differently once later turns "
                               f"follow, so its response tokens cannot be found; train with loss on the prompt "
                               f"turned on, or split the conversation into one row per reply",
                               file=file, row=example.row, field="messages")
        spans.append(span)
    return spans


def label_range(offsets, span: tuple[int, int]) -> tuple[int, int]:
    """The tokens (``offsets``: each token's (start, end) character, both ascending along the text) that
    overlap the character ``span``, as a range [first, last): from the first ending after its start to the
    last starting before its end."""
    first = bisect.bisect_right(offsets, span[0], key=itemgetter(1))
    return first, bisect.bisect_left(offsets, span[1], key=itemgetter(0))


def _token_labels(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Token ids of ``text``, and labels that keep the tokens overlapping a span."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # slow tokenizers have no offsets: tokenize the prefixes instead
        return _token_labels_by_prefix(tokenizer, text, spans)
    ids = list(encoded["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for span in spans:
        first, last = label_range(encoded["offset_mapping"], span)
        labels[first:last] = ids[first:last]
    return ids, labels


def _token_labels_by_prefix(tokenizer, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    def encode(part: str) -> list[int]:
        return list(tokenizer(part, add_special_tokens=False)["input_ids"])

    ids = encode(text)
    labels = [IGNORE_INDEX] * len(ids)
    for span_start, span_end in spans:
        # Where a token merges across the turn's start, the shared prefix stops
        # before it, so the merged token is labelled (as with offsets).
        prefix = encode(text[:span_start])
        start = next((i for i, (a, b) in enumerate(zip(prefix, ids)) if a != b), len(prefix))
        end = len(encode(text[:span_end]))
        labels[start:end] = ids[start:end]
    return ids, labels


def ensure_chat_template(tokenizer) -> None:
    use_chat_template(tokenizer, AUTO)


def tokenize_example(example: Example, tokenizer, *, max_length: int, loss_on_prompt: bool,
                     file: str = "") -> TokenizedExample:
    ensure_chat_template(tokenizer)
    text = _render(tokenizer, example, len(example.messages), file=file)
    if loss_on_prompt:
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        labels = list(ids)
    else:
        ids, labels = _token_labels(tokenizer, text, _assistant_spans(tokenizer, example, text, file))
    return TokenizedExample(input_ids=ids[:max_length], labels=labels[:max_length], truncated=len(ids) > max_length,
                            row=example.row)


def has_labels(tokenized: TokenizedExample) -> bool:
    # The first label never counts: a causal LM predicts token i from tokens before it.
    return any(label != IGNORE_INDEX for label in tokenized.labels[1:])


def tokenize_examples(examples: list[Example], tokenizer, *, max_length: int, loss_on_prompt: bool,
                      file: str = "") -> list[TokenizedExample]:
    """Every example tokenized; a row truncated to prompt only has nothing to learn from and is left out."""
    tokenized = (tokenize_example(e, tokenizer, max_length=max_length, loss_on_prompt=loss_on_prompt, file=file)
                 for e in examples)
    return [t for t in tokenized if has_labels(t)]


GROUP_BATCHES = 50  # length grouping sorts windows of this many batches


def batches(examples: list, *, batch_size: int, seed: int, epoch: int, group_by_length: bool = False):
    """Shuffled batches for one epoch; the order depends only on (seed, epoch).

    ``group_by_length`` puts rows of similar length together, so a padded
    batch wastes less on padding: the shuffled order is cut into windows of
    ``GROUP_BATCHES`` batches, each window sorted by length and cut into
    batches, and the batches shuffled again (still random from batch to
    batch, but no longer within a window)."""
    order = list(range(len(examples)))
    rng = random.Random(seed * 1000003 + epoch)
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * GROUP_BATCHES
        grouped = []
        for start in range(0, len(order), window):
            part = sorted(order[start:start + window], key=lambda i: -len(examples[i].input_ids))
            grouped += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        rng.shuffle(grouped)
        for batch in grouped:
            yield [examples[i] for i in batch]
        return
    for start in range(0, len(order), batch_size):
        yield [examples[i] for i in order[start:start + batch_size]]


def pad_right(sequences: list[list[int]], value: int):
    """A (rows, longest) long tensor of ``sequences``, right-padded with ``value``."""
    import torch

    out = torch.full((len(sequences), max(len(s) for s in sequences)), value, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        out[row, :len(sequence)] = torch.tensor(sequence, dtype=torch.long)
    return out


def collate(batch: list[TokenizedExample], *, pad_token_id: int):
    """Right-pad a batch into tensors: input_ids, attention_mask, labels."""
    return {"input_ids": pad_right([e.input_ids for e in batch], pad_token_id),
            "attention_mask": pad_right([[1] * len(e.input_ids) for e in batch], 0),
            "labels": pad_right([e.labels for e in batch], IGNORE_INDEX)}
