"""Sequence classification: rows of ``text`` + ``label`` in, label ids out.

Labels may be strings or whole numbers (JSON 1, CSV "1" and 1.0 are the same
label). ``label2id`` sorts them (numerically when every label is a whole
number, so 2 comes before 10) and so does not depend on row order: the same
labels always get the same ids. Texts are tokenized as they are, without a
chat template, truncated to ``max_length``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tuning.data import formats
from tuning.data.records import Paths, dataset_files, read_all, resolve_column, text_value
from tuning.data.sft import pad_right
from tuning.errors import DatasetError

TEXT_KEYS = ("text", "sentence", "content")
LABEL_KEYS = ("label", "class", "category")
ENCODE_CHUNK = 256  # texts tokenized per call


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str  # as written in the file, normalised to text
    row: int


@dataclass(frozen=True)
class ClassificationExample:
    input_ids: list[int]
    label: int  # the id in label2id
    truncated: bool = False
    row: int | None = None


def _label(record: dict, key: str, name: str, row: int) -> str:
    value = record.get(key)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.0 from a pandas export is the label 1
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    problem = ("is missing" if value is None else "is empty" if isinstance(value, str)
               else "must be text or a whole number")
    raise DatasetError(f"{problem}; give every row one label", file=name, row=row, field=key)


def iter_labelled(path: Paths, *, name: str | None = None,
                  mapping: dict[str, str] | None = None) -> Iterator[LabelledText]:
    """Every row of the dataset (one file, a zip, or a list of files), checked
    as it is read. ``mapping`` may name the columns: {"text": ..., "label": ...}."""
    paths, names, _ = dataset_files(path, name)
    keys = None
    for item in formats.iter_rows(paths, names=names):
        if keys is None:
            hint = "Classification reads a text column and a label column"
            keys = (resolve_column(("text",), TEXT_KEYS, item.data, item.file, mapping=mapping, row=item.row,
                                   hint=hint),
                    resolve_column(("label",), LABEL_KEYS, item.data, item.file, mapping=mapping, row=item.row,
                                   hint=hint))
        yield LabelledText(text_value(item.data, keys[0], item.file, item.row),
                           _label(item.data, keys[1], item.file, item.row), item.row)


def read_labelled(path: Paths, *, name: str | None = None,
                  mapping: dict[str, str] | None = None) -> list[LabelledText]:
    return read_all(iter_labelled(path, name=name, mapping=mapping), dataset_files(path, name)[2])


def _whole_number(label: str) -> bool:
    return label.lstrip("-").isdigit()


def build_label2id(labels: Iterable[str], *, file: str = "") -> dict[str, int]:
    """Label -> id, sorted; at least two distinct labels."""
    unique = set(labels)
    if len(unique) < 2:
        only = f"the label '{next(iter(unique))}'" if unique else "no label"
        raise DatasetError(f"every row has {only}; a classifier needs at least two different labels",
                           file=file, field="label")
    if all(_whole_number(label) for label in unique):
        ordered = sorted(unique, key=lambda label: (int(label), label))
    else:
        ordered = sorted(unique)
    return {label: index for index, label in enumerate(ordered)}


def tokenize_labelled(rows: list[LabelledText], tokenizer, *, label2id: dict[str, int],
                      max_length: int) -> list[ClassificationExample]:
    """Token ids (with the tokenizer's own special tokens, e.g. [CLS] … [SEP]) and label ids."""
    examples = []
    for start in range(0, len(rows), ENCODE_CHUNK):
        chunk = rows[start:start + ENCODE_CHUNK]
        for row, ids in zip(chunk, tokenizer([r.text for r in chunk])["input_ids"]):
            truncated = len(ids) > max_length
            if truncated:
                # Re-encoded with truncation (not sliced) so that closing special tokens such as [SEP] are kept.
                ids = tokenizer(row.text, truncation=True, max_length=max_length)["input_ids"]
            examples.append(ClassificationExample(list(ids), label2id[row.label], truncated, row.row))
    return examples


def collate_classification(batch: list[ClassificationExample], *, pad_token_id: int):
    """Right-pad a batch into tensors: input_ids, attention_mask, and labels (one id per row)."""
    import torch

    return {"input_ids": pad_right([e.input_ids for e in batch], pad_token_id),
            "attention_mask": pad_right([[1] * len(e.input_ids) for e in batch], 0),
            "labels": torch.tensor([e.label for e in batch], dtype=torch.long)}
