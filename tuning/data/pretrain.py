"""Continued pre-training on plain text: documents in, fixed-length blocks out.

Documents come from a ``.txt``/``.md`` file (one per blank-line-separated
block of lines, or the whole file as one) or from the ``text`` column (or
the column a mapping names) of any other format; a zip or a list of files
may mix both.
Each is tokenized and followed by EOS (so the model learns where a document
ends); all are concatenated and cut into blocks of ``max_length`` tokens,
with labels equal to the input ids (the loss is on every token). No tokens
are wasted on padding except in the last block.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tuning.data import formats
from tuning.data.records import Paths, dataset_files, read_all
from tuning.data.schema import Rows, task_rows
from tuning.data.schemas.text import Document
from tuning.data.sft import TokenizedExample
from tuning.errors import DatasetError, ModelError

TEXT_SPLITS = ("paragraphs", "file")  # how a .txt file is cut into documents
MIN_TAIL_TOKENS = 16  # a shorter last block teaches little and is dropped
ENCODE_CHUNK = 256  # documents tokenized per call (the fast tokenizer batches them in parallel)


def _txt_documents(lines: Iterable[tuple[int, str]], split: str) -> Iterator[Document]:
    kept: list[str] = []
    start = 0
    for number, line in lines:
        if line.strip() or (split == "file" and kept):
            start = start or number
            kept.append(line)
        elif kept:  # a blank line ends the paragraph
            yield Document("".join(kept).strip(), start)
            kept, start = [], 0
    if kept:
        yield Document("".join(kept).strip(), start)


def document_rows(path: Paths, *, name: str | None = None, split: str = "paragraphs", schema: str | None = None,
                  mapping: dict[str, str] | None = None) -> Rows:
    """The dataset read for pretrain: its detection, the schema it is read as, and its documents."""
    if split not in TEXT_SPLITS:
        raise DatasetError(f"unknown text split '{split}'; use one of {', '.join(TEXT_SPLITS)}",
                           file=dataset_files(path, name)[2])
    return task_rows("pretrain", path, name=name, schema=schema, mapping=mapping,
                     plain_text=lambda source: _txt_documents(formats.source_lines(source), split))


def iter_documents(path: Paths, *, name: str | None = None, split: str = "paragraphs", schema: str | None = None,
                   mapping: dict[str, str] | None = None) -> Iterator[Document]:
    """Every document of the dataset (one file, a zip, or a list of files),
    checked as it is read. ``mapping`` may name the text column: {"text": column}."""
    yield from document_rows(path, name=name, split=split, schema=schema, mapping=mapping).records


def read_documents(path: Paths, *, name: str | None = None, split: str = "paragraphs", schema: str | None = None,
                   mapping: dict[str, str] | None = None) -> list[Document]:
    return read_all(iter_documents(path, name=name, split=split, schema=schema, mapping=mapping),
                    dataset_files(path, name)[2])


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
