"""Show exactly what the model will be trained on.

Each row is rendered through the base model's chat template and tokenized
by ``sft.tokenize_example``, the function training uses, so the preview
cannot drift from training. The rendered text is cut into segments of
consecutive tokens that carry loss or do not; the segments concatenate to
the rendered text exactly (they are sliced from it at token boundaries,
not decoded token by token, which would mangle characters split across
tokens). A row longer than ``max_length`` ends in a segment marked
``cut``: the text training never sees. Preference pairs are shown side by
side, each reply rendered as ``tokenize_pair`` renders it.
"""

from __future__ import annotations

from tuning.data.preference import pair_examples
from tuning.data.readers import Example
from tuning.data.sft import IGNORE_INDEX, has_labels, tokenize_example

__all__ = ["render_preview", "render_pair_preview", "rendered_text", "token_starts"]


def rendered_text(example: Example, tokenizer) -> str:
    """The whole conversation as template text, as ``sft`` renders it (call after ``tokenize_example``,
    which installs the fallback template on a tokenizer that has none)."""
    messages = [{"role": m.role, "content": m.content} for m in example.messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


def token_starts(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` (as training tokenizes it) and the character where each token starts."""
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(encoded["input_ids"]), [start for start, _ in encoded["offset_mapping"]]
    except NotImplementedError:  # slow tokenizers have no offsets: measure decoded prefixes instead
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return ids, [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]


def _segments(text: str, starts: list[int], flags: list[bool], cut: int | None) -> list[dict]:
    """Slices of ``text``, one per run of equal ``flags``; ``cut`` (a character) starts the untrained tail."""
    segments: list[dict] = []
    boundary = 0
    for index, flag in enumerate(flags):
        if index and flag == flags[index - 1]:
            continue
        # Offsets of a character split across tokens overlap; never step back.
        start = max(boundary, starts[index]) if index else 0
        if segments:
            segments[-1]["text"] = text[boundary:start]
        segments.append({"text": "", "loss": flag, "cut": False})
        boundary = start
    end = len(text) if cut is None else max(boundary, cut)
    if segments:
        segments[-1]["text"] = text[boundary:end]
    if cut is not None:
        segments.append({"text": text[end:], "loss": False, "cut": True})
    return [s for s in segments if s["text"] or s["cut"]]


def render_pair_preview(pairs: list, tokenizer, *, max_length: int, rows: int = 5, file: str = "") -> list[dict]:
    """The first ``rows`` preference pairs (``preference.PreferencePair``) as preference training sees
    them: ``{"row", "sides": {"chosen": <a render_preview row>, "rejected": <one>}}``, each side rendered
    through the chat template with the tokens that carry loss (the judged reply) marked."""
    out = []
    for pair in pairs[:rows]:
        chosen, rejected = (render_preview([example], tokenizer, max_length=max_length, file=file)[0]
                            for example in pair_examples(pair))
        out.append({"row": pair.row, "sides": {"chosen": chosen, "rejected": rejected}})
    return out


def render_preview(examples: list[Example], tokenizer, *, max_length: int, loss_on_prompt: bool = False,
                   rows: int = 5, file: str = "") -> list[dict]:
    """The first ``rows`` examples as training sees them. Per row::

        {"row": 1-based row in the file, "segments": [{"text", "loss", "cut"}],
         "tokens": token count before truncation, "trained_tokens": tokens kept (at most max_length),
         "loss_tokens": kept tokens that carry loss, "truncated": bool,
         "skipped": bool}   # no loss token within max_length: training leaves the row out

    ``"".join(s["text"] for s in segments)`` is the rendered text; ``cut`` marks the part past max_length.
    With ``loss_on_prompt`` every kept token carries loss, as in training.
    """
    out = []
    for example in examples[:rows]:
        tokenized = tokenize_example(example, tokenizer, max_length=max_length, loss_on_prompt=loss_on_prompt,
                                     file=file)
        text = rendered_text(example, tokenizer)
        ids, starts = token_starts(tokenizer, text)
        if ids[:max_length] != tokenized.input_ids:  # sft tokenizes the same text the same way; say so if not
            raise RuntimeError("the preview tokenized the rendered text differently from training")
        flags = [label != IGNORE_INDEX for label in tokenized.labels]
        cut = starts[max_length] if tokenized.truncated else None
        out.append({"row": example.row, "segments": _segments(text, starts, flags, cut), "tokens": len(ids),
                    "trained_tokens": len(tokenized.input_ids), "loss_tokens": sum(flags),
                    "truncated": tokenized.truncated, "skipped": not has_labels(tokenized)})
    return out
