"""One entry per training task, for the trainer and the web side.

Tasks: ``sft`` (instruction, chat or prompt/completion rows; see
``readers``), ``pretrain`` (plain text; see ``pretrain``) and ``classify``
(text + label; see ``classify``).

Trainer (worker process)::

    data = load_task_data(task, path, name=name, tokenizer=tokenizer, max_length=512, loss_on_prompt=False)
    train, validation = split_validation(data.items, ratio, seed)   # tuning.data.splits
    collate = collate_for_task(task, pad_token_id=tokenizer.pad_token_id)
    for batch in batches(train, batch_size=8, seed=seed, epoch=epoch):
        tensors = collate(batch)    # input_ids, attention_mask, labels

``data.items`` are ``sft.TokenizedExample`` (sft, pretrain: labels per token,
-100 where no loss) or ``classify.ClassificationExample`` (classify: one
label id per row); ``data.label2id`` is set for classify only.

Web side (no torch, no tokenizer)::

    summary = summarize(path, name=filename, task="sft")   # DatasetSummary, or DatasetError

``summary.preview`` holds, per task: ``readers.PreviewRow`` (system, prompt,
response, messages), ``pretrain.Document`` (text, row) or
``classify.LabelledText`` (text, label, row); serialise with
``dataclasses.asdict``. Every problem raises DatasetError naming the file,
the row and the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tuning.data import classify, pretrain, readers, sft
from tuning.data.records import DatasetSummary, summarize_rows
from tuning.data.sft import batches
from tuning.errors import ConfigError, DatasetError

__all__ = ["TASKS", "TaskData", "load_task_data", "summarize", "collate_for_task", "batches"]

TASKS = ("sft", "pretrain", "classify")
PREVIEW_CHARS = 2000  # a preview shows the start of a long document, not all of it


@dataclass(frozen=True)
class TaskData:
    items: list  # sft.TokenizedExample, or classify.ClassificationExample for classify
    label2id: dict[str, int] | None  # classify only
    rows_read: int  # rows (documents for pretrain) in the file
    rows_dropped: int  # rows left out: nothing to learn from within max_length
    truncated: int  # rows cut to max_length
    dropped_rows: tuple[int, ...] = ()  # their 1-based row numbers


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ConfigError({"task": f"unknown task '{task}'; choose one of {', '.join(TASKS)}"})


def _load_sft(path: Path, name: str, tokenizer, max_length: int, loss_on_prompt: bool) -> TaskData:
    examples = readers.read_examples(path, name=name)
    tokenized = [sft.tokenize_example(e, tokenizer, max_length=max_length, loss_on_prompt=loss_on_prompt,
                                      file=name) for e in examples]
    kept = [t for t in tokenized if sft.has_labels(t)]
    dropped = tuple(t.row for t in tokenized if not sft.has_labels(t))
    if not kept:
        raise DatasetError(f"no row has any response tokens within max length {max_length} (the prompts are "
                           f"longer); raise max length", file=name)
    return TaskData(items=kept, label2id=None, rows_read=len(examples), rows_dropped=len(dropped),
                    truncated=sum(t.truncated for t in kept), dropped_rows=dropped)


def load_task_data(task: str, path: str | Path, *, name: str | None = None, tokenizer, max_length: int,
                   loss_on_prompt: bool = False, text_split: str = "paragraphs") -> TaskData:
    """Read, check and tokenize the whole file for ``task``.

    ``loss_on_prompt`` applies to sft only; ``text_split`` ("paragraphs" or
    "file") says how a .txt file is cut into documents for pretrain.
    """
    _check_task(task)
    path = Path(path)
    name = name or path.name
    if task == "sft":
        return _load_sft(path, name, tokenizer, max_length, loss_on_prompt)
    if task == "pretrain":
        documents = pretrain.read_documents(path, name=name, split=text_split)
        blocks = pretrain.make_blocks(documents, tokenizer, max_length=max_length, file=name)
        return TaskData(items=blocks, label2id=None, rows_read=len(documents), rows_dropped=0, truncated=0)
    rows = classify.read_labelled(path, name=name)
    label2id = classify.build_label2id((r.label for r in rows), file=name)
    items = classify.tokenize_labelled(rows, tokenizer, label2id=label2id, max_length=max_length)
    return TaskData(items=items, label2id=label2id, rows_read=len(rows), rows_dropped=0,
                    truncated=sum(i.truncated for i in items))


def collate_for_task(task: str, *, pad_token_id: int) -> Callable[[list], dict]:
    """The function that turns a batch of ``items`` into tensors for ``task``."""
    _check_task(task)
    return partial(classify.collate_classification if task == "classify" else sft.collate,
                   pad_token_id=pad_token_id)


def _shorten(row):
    return dataclasses.replace(row, text=row.text[:PREVIEW_CHARS])


def summarize(path: str | Path, *, name: str | None = None, task: str = "sft", preview_rows: int = 5,
              text_split: str = "paragraphs") -> DatasetSummary:
    """Check the whole file for ``task`` without tokenizing it (cheap enough
    for the web process: rows are streamed, only the preview is kept)."""
    _check_task(task)
    name = name or Path(path).name
    if task == "sft":
        return readers.summarize(path, name=name, preview_rows=preview_rows)
    if task == "pretrain":
        return summarize_rows(path, name, pretrain.iter_documents(path, name=name, split=text_split),
                              schema="text", preview_rows=preview_rows, preview=_shorten)
    labels = set()
    rows = (labels.add(row.label) or row for row in classify.iter_labelled(path, name=name))  # note each label
    summary = summarize_rows(path, name, rows, schema="text+label", preview_rows=preview_rows, preview=_shorten)
    return dataclasses.replace(summary, labels=tuple(classify.build_label2id(labels, file=name)))
