"""One entry per training task, for the trainer and the web side.

Tasks: ``sft`` (instruction, chat or prompt/completion rows; see
``readers``), ``pretrain`` (plain text; see ``pretrain``), ``classify``
(text + label; see ``classify``), ``preference`` (prompt, chosen,
rejected; see ``preference``: trained on by DPO and the other
preference losses of ``tuning.preference``; or unpaired completions, see
``unpaired``, for KTO), ``reward`` (the same pairs, for a reward model:
``tuning.reward``) and ``grpo`` (the sft rows read as prompts with
reference answers; see ``prompts``). Any format of ``formats`` is read (JSONL,
JSON, CSV, TSV, Parquet, text, zip), from one path or a list of paths.
``schema=`` (a name from ``schema.SCHEMAS``) and ``mapping=`` ({canonical
field: column}) override what is detected.

Trainer (worker process)::

    data = load_task_data(task, path, name=name, tokenizer=tokenizer, max_length=512, loss_on_prompt=False)
    train, validation = split_validation(data.items, ratio, seed)   # tuning.data.splits
    collate = collate_for_task(task, pad_token_id=tokenizer.pad_token_id)
    for batch in batches(train, batch_size=8, seed=seed, epoch=epoch):
        tensors = collate(batch)    # input_ids, attention_mask, labels

``data.items`` are ``sft.TokenizedExample`` (sft, pretrain: labels per token,
-100 where no loss), ``classify.ClassificationExample`` (classify: one
label id per row) or ``preference.PreferenceExample`` (preference: a chosen
and a rejected ``TokenizedExample``), or ``unpaired.UnpairedExample`` for
KTO's unpaired completions (prompt, completion, label); ``data.label2id`` is set for classify only.

Web side (no torch, no tokenizer)::

    summary = summarize(path, name=filename, task="sft")   # DatasetSummary, or DatasetError
    summary.format, summary.encoding, summary.detection   # the schema for the user to confirm

``summary.preview`` holds, per task: ``readers.PreviewRow`` (system, prompt,
response, messages), ``pretrain.Document`` (text, row) or
``classify.LabelledText`` (text, label, row) or ``preference.PreferencePair``
(prompt, chosen, rejected, system, row) or ``unpaired.UnpairedCompletion``
(prompt, completion, desirable, system, row); serialise with
``dataclasses.asdict``. Every problem raises DatasetError naming the file,
the row and the field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from tuning.data import classify, preference, pretrain, prompts, readers, sft, unpaired
from tuning.data.records import DatasetSummary, Paths, dataset_files, summarize_rows
from tuning.data.schema import canonical_schema, schemas_for_task
from tuning.data.sft import batches
from tuning.errors import ConfigError, DatasetError

__all__ = ["TASKS", "TaskData", "load_task_data", "summarize", "collate_for_task", "batches"]

TASKS = ("sft", "pretrain", "classify", "preference", "reward", "grpo")
TRAINABLE = TASKS
PREVIEW_CHARS = 2000  # a preview shows the start of a long document, not all of it

Progress = Callable[[int, int], None]  # (rows done, rows in all)


@dataclass(frozen=True)
class TaskData:
    items: list  # sft.TokenizedExample, classify.ClassificationExample or preference.PreferenceExample
    label2id: dict[str, int] | None  # classify only
    rows_read: int  # rows (documents for pretrain) in the file
    rows_dropped: int  # rows left out: nothing to learn from (or compare) within max_length
    truncated: int  # rows cut to max_length
    dropped_rows: tuple[int, ...] = ()  # their 1-based row numbers


def _check_task(task: str, *, training: bool = False) -> None:
    if task not in (TRAINABLE if training else TASKS):
        raise ConfigError({"task": f"unknown task '{task}'; choose one of {', '.join(TASKS)}"})


def _check_schema(task: str, schema: str | None, name: str) -> str | None:
    """The schema name, when given, checked against the task."""
    if schema is None:
        return None
    schema = canonical_schema(schema, file=name)
    if schema not in schemas_for_task(task):
        raise DatasetError(f"the {schema} schema cannot be used for {task}; for {task} use "
                           f"{', '.join(schemas_for_task(task))}", file=name, field="schema")
    return schema


def _load_sft(path: Paths, name: str | None, tokenizer, max_length: int, loss_on_prompt: bool, schema: str | None,
              mapping: dict | None, progress: Progress) -> TaskData:
    examples = readers.read_examples(path, name=name, schema=schema, mapping=mapping)
    name = dataset_files(path, name)[2]
    tokenized = []
    for done, example in enumerate(examples, start=1):
        tokenized.append(sft.tokenize_example(example, tokenizer, max_length=max_length,
                                              loss_on_prompt=loss_on_prompt, file=name))
        progress(done, len(examples))
    kept = [t for t in tokenized if sft.has_labels(t)]
    dropped = tuple(t.row for t in tokenized if not sft.has_labels(t))
    if not kept:
        raise DatasetError(f"no row has any response tokens within max length {max_length} (the prompts are "
                           f"longer); raise max length", file=name)
    return TaskData(items=kept, label2id=None, rows_read=len(examples), rows_dropped=len(dropped),
                    truncated=sum(t.truncated for t in kept), dropped_rows=dropped)


def load_task_data(task: str, path: Paths, *, name: str | None = None, tokenizer, max_length: int,
                   loss_on_prompt: bool = False, text_split: str = "paragraphs", schema: str | None = None,
                   mapping: dict[str, str] | None = None, progress: Progress | None = None) -> TaskData:
    """Read, check and tokenize the whole dataset (a path, or a list of paths) for ``task``.

    ``loss_on_prompt`` applies to sft only; ``text_split`` ("paragraphs" or
    "file") says how a .txt file is cut into documents for pretrain;
    ``schema`` and ``mapping`` override the detected schema and columns;
    ``progress(done, total)`` hears how many rows are tokenized (sft).
    """
    _check_task(task, training=True)
    label = dataset_files(path, name)[2]
    schema = _check_schema(task, schema, label)
    if task == "sft":
        return _load_sft(path, name, tokenizer, max_length, loss_on_prompt, schema, mapping,
                         progress or (lambda done, total: None))
    if task == "preference":
        rows = unpaired.read_completions(path, name=name, schema=schema, mapping=mapping)
        tokenize = (unpaired.tokenize_completions if isinstance(rows[0], unpaired.UnpairedCompletion)
                    else preference.tokenize_pairs)  # KTO's unpaired completions, or pairs
        items, dropped = tokenize(rows, tokenizer, max_length=max_length, file=label,
                                  progress=progress or (lambda done, total: None))
        return TaskData(items=items, label2id=None, rows_read=len(rows), rows_dropped=len(dropped),
                        truncated=sum(i.truncated for i in items), dropped_rows=dropped)
    if task == "reward":  # the same pairs, scored whole by a reward model (tuning.reward)
        pairs = preference.read_pairs(path, name=name, schema=schema, mapping=mapping, task="reward")
        items, dropped = preference.tokenize_pairs(pairs, tokenizer, max_length=max_length, file=label,
                                                   progress=progress or (lambda done, total: None))
        return TaskData(items=items, label2id=None, rows_read=len(pairs), rows_dropped=len(dropped),
                        truncated=sum(i.truncated for i in items), dropped_rows=dropped)
    if task == "grpo":  # prompts with reference answers: the model writes the completions (tuning.grpo)
        items, dropped = prompts.read_prompts(path, tokenizer, name=name, max_length=max_length, schema=schema,
                                              mapping=mapping, file=label,
                                              progress=progress or (lambda done, total: None))
        return TaskData(items=items, label2id=None, rows_read=len(items) + len(dropped),
                        rows_dropped=len(dropped), truncated=0, dropped_rows=dropped)
    if task == "pretrain":
        documents = pretrain.read_documents(path, name=name, split=text_split, schema=schema, mapping=mapping)
        blocks = pretrain.make_blocks(documents, tokenizer, max_length=max_length, file=label)
        return TaskData(items=blocks, label2id=None, rows_read=len(documents), rows_dropped=0, truncated=0)
    rows = classify.read_labelled(path, name=name, schema=schema, mapping=mapping)
    label2id = classify.build_label2id((r.label for r in rows), file=label)
    items = classify.tokenize_labelled(rows, tokenizer, label2id=label2id, max_length=max_length)
    return TaskData(items=items, label2id=label2id, rows_read=len(rows), rows_dropped=0,
                    truncated=sum(i.truncated for i in items))


def collate_for_task(task: str, *, pad_token_id: int) -> Callable[[list], dict]:
    """The function that turns a batch of ``items`` into tensors for ``task``."""
    _check_task(task, training=True)
    collate = {"classify": classify.collate_classification, "preference": _collate_preference,
               "reward": preference.collate_pairs, "grpo": prompts.collate_prompts}
    return partial(collate.get(task, sft.collate), pad_token_id=pad_token_id)


def _collate_preference(batch: list, *, pad_token_id: int) -> dict:
    if isinstance(batch[0], unpaired.UnpairedExample):
        return unpaired.collate_unpaired(batch, pad_token_id=pad_token_id)
    return preference.collate_pairs(batch, pad_token_id=pad_token_id)


def _shorten(row):
    return dataclasses.replace(row, text=row.text[:PREVIEW_CHARS])


def _shorten_pair(row):
    """A pair's (or an unpaired completion's) texts cut to the preview's length."""
    texts = ("prompt", "chosen", "rejected", "completion")
    return dataclasses.replace(row, **{name: getattr(row, name)[:PREVIEW_CHARS] for name in texts
                                       if hasattr(row, name)})


def summarize(path: Paths, *, name: str | None = None, task: str = "sft", preview_rows: int = 5,
              text_split: str = "paragraphs", schema: str | None = None,
              mapping: dict[str, str] | None = None) -> DatasetSummary:
    """Check the whole dataset for ``task`` without tokenizing it (cheap enough
    for the web process: rows are streamed, only counts and the preview are
    kept). The summary carries the format, encoding and schema detection, and
    the schema the rows were read as (``schema.choose_schema``)."""
    _check_task(task)
    label = dataset_files(path, name)[2]
    schema = _check_schema(task, schema, label)
    if task in ("sft", "grpo"):  # GRPO reads the same rows (prompts and reference answers)
        return readers.summarize(path, name=name, preview_rows=preview_rows, schema=schema, mapping=mapping)
    labels = set()
    if task == "pretrain":
        rows = pretrain.document_rows(path, name=name, split=text_split, schema=schema, mapping=mapping)
        records, preview = rows.records, _shorten
    elif task == "classify":
        rows = classify.labelled_rows(path, name=name, schema=schema, mapping=mapping)
        records, preview = (labels.add(row.label) or row for row in rows.records), _shorten
    else:
        rows = preference.pair_rows(path, name=name, schema=schema, mapping=mapping, task=task)
        records, preview = rows.records, _shorten_pair
    summary = summarize_rows(path, label, records, schema=rows.schema, detection=rows.detection,
                             preview_rows=preview_rows, preview=preview)
    if task == "classify":
        summary = dataclasses.replace(summary, labels=tuple(classify.build_label2id(labels, file=label)))
    return summary
