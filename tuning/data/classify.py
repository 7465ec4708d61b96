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

from tuning.data.records import Paths, dataset_files, read_all
from tuning.data.schema import Rows, task_rows
from tuning.data.schemas.text import LabelledText
from tuning.data.sft import pad_right
from tuning.errors import DatasetError

ENCODE_CHUNK = 256  # texts tokenized per call


@dataclass(frozen=True)
class ClassificationExample:
    input_ids: list[int]
    label: int  # the id in label2id
    truncated: bool = False
    row: int | None = None


def labelled_rows(path: Paths, *, name: str | None = None, schema: str | None = None,
                  mapping: dict[str, str] | None = None) -> Rows:
    """The dataset read for classify: its detection, the schema it is read as, and its labelled texts."""
    return task_rows("classify", path, name=name, schema=schema, mapping=mapping)


def iter_labelled(path: Paths, *, name: str | None = None, schema: str | None = None,
                  mapping: dict[str, str] | None = None) -> Iterator[LabelledText]:
    """Every row of the dataset (one file, a zip, or a list of files), checked
    as it is read. ``mapping`` may name the columns: {"text": ..., "label": ...}."""
    yield from labelled_rows(path, name=name, schema=schema, mapping=mapping).records


def read_labelled(path: Paths, *, name: str | None = None, schema: str | None = None,
                  mapping: dict[str, str] | None = None) -> list[LabelledText]:
    return read_all(iter_labelled(path, name=name, schema=schema, mapping=mapping), dataset_files(path, name)[2])


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
