"""Continued pre-training on plain text: documents in, fixed-length blocks out.

Documents come from a ``.txt`` file (one per blank-line-separated block of
lines, or the whole file as one) or from the ``text`` column of JSONL/CSV.
Each is tokenized and followed by EOS (so the model learns where a document
ends); all are concatenated and cut into blocks of ``max_length`` tokens,
with labels equal to the input ids (the loss is on every token). No tokens
are wasted on padding except in the last block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuning.data.records import detect_format, iter_lines, iter_records, read_all, require_column, text_value
from tuning.data.sft import TokenizedExample
from tuning.errors import DatasetError, ModelError

TEXT_KEYS = ("text", "content")
TEXT_SPLITS = ("paragraphs", "file")  # how a .txt file is cut into documents
MIN_TAIL_TOKENS = 16  # a shorter last block teaches little and is dropped
ENCODE_CHUNK = 256  # documents tokenized per call (the fast tokenizer batches them in parallel)


@dataclass(frozen=True)
class Document:
    text: str
    row: int  # 1-based: the line a .txt paragraph starts on, or the JSONL/CSV row


def _txt_documents(path: Path, name: str, split: str) -> Iterator[Document]:
    lines: list[str] = []
    start = 0
    for number, line in iter_lines(path, name):
        if line.strip() or (split == "file" and lines):
            start = start or number
            lines.append(line)
        elif lines:  # a blank line ends the paragraph
            yield Document("".join(lines).strip(), start)
            lines, start = [], 0
    if lines:
        yield Document("".join(lines).strip(), start)


def iter_documents(path: str | Path, *, name: str | None = None, split: str = "paragraphs") -> Iterator[Document]:
    """Every document of the file, checked as it is read."""
    path = Path(path)
    name = name or path.name
    if split not in TEXT_SPLITS:
        raise DatasetError(f"unknown text split '{split}'; use one of {', '.join(TEXT_SPLITS)}", file=name)
    if detect_format(name) == "text":
        yield from _txt_documents(path, name, split)
        return
    key = None
    for row, record in iter_records(path, name):
        key = key or require_column(TEXT_KEYS, record, name, row=row,
                                    hint="Continued pre-training reads one document per row from a text column")
        yield Document(text_value(record, key, name, row), row)


def read_documents(path: str | Path, *, name: str | None = None, split: str = "paragraphs") -> list[Document]:
    return read_all(iter_documents(path, name=name, split=split), name or Path(path).name)


def make_blocks(documents: list[Document], tokenizer, *, max_length: int,
                file: str = "") -> list[TokenizedExample]:
    """Concatenate the documents (each ending in EOS) and cut the stream into
    ``max_length``-token blocks; the last, partial block is kept if it has at
    least ``MIN_TAIL_TOKENS`` tokens (or fills the block)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelError("the base model's tokenizer has no end-of-sequence token, which continued pre-training "
                         "puts between documents; choose another base model")
    stream: list[int] = []
    for start in range(0, len(documents), ENCODE_CHUNK):
        chunk = documents[start:start + ENCODE_CHUNK]
        # Default special tokens: a BOS where the model expects one at a document start.
        for ids in tokenizer([d.text for d in chunk])["input_ids"]:
            stream += ids if ids and ids[-1] == eos else [*ids, eos]
    blocks = [stream[i:i + max_length] for i in range(0, len(stream), max_length)]
    if blocks and len(blocks[-1]) < min(MIN_TAIL_TOKENS, max_length):
        blocks.pop()
    if not blocks:
        raise DatasetError(f"the text is only {len(stream)} tokens long; continued pre-training needs at least "
                           f"{min(MIN_TAIL_TOKENS, max_length)}. Add more text", file=file)
    return [TokenizedExample(input_ids=block, labels=list(block)) for block in blocks]
