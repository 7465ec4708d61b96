"""An on-disk cache of tokenized training data.

Tokenizing a dataset (rendering chat templates, finding response spans)
takes longer than a short run's first steps, and a team re-trains on the
same file with the same base model again and again. ``load_task_data_cached``
keys the result of ``tasks.load_task_data`` on everything it depends on:

- the dataset file's content (sha256), not its name or path;
- the tokenizer: its full ``tokenizer.json`` serialisation, chat template
  (the fallback template where it has none) and special tokens;
- the task, max_length, loss_on_prompt and text split;
- the source of the modules that read and tokenize, so a code change
  never serves stale items.

An entry is one safetensors file: the token ids of all items laid end to
end with their offsets, per-item labels/flags as tensors, and the TaskData
counts as JSON in the file's metadata. Never pickle: a cache directory may
be shared by workers, and loading it must not run code. Entries are written
to a temporary name and renamed, so concurrent workers never read half a
file; the least recently used beyond ``MAX_ENTRIES`` are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tuning.data import classify, preference, sft, unpaired
from tuning.data.records import file_sha256
from tuning.data.tasks import TaskData, load_task_data

MAX_ENTRIES = 32
FORMAT = "tuning-token-cache/2"  # bump when the file layout below changes
# Every module that reads rows or tokenizes them: a change to any of them may change the cached items.
_SOURCES = ("sft.py", "tasks.py", "pretrain.py", "classify.py", "readers.py", "records.py", "formats.py", "schema.py",
            "preference.py", "sources.py", "parsers.py", "schemas/__init__.py", "schemas/conversation.py",
            "schemas/text.py", "schemas/preference.py", "unpaired.py", "schemas/unpaired.py")


def default_cache_dir(output_dir: str | Path) -> Path:
    """Beside the run's output directory, so runs under one jobs directory
    (one worker's, or a shared volume) share it."""
    return Path(output_dir).resolve().parent / ".token-cache"


def tokenizer_identity(tokenizer) -> str:
    """A hash that changes whenever the tokenizer would tokenize or render differently."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())  # vocabulary, merges, normaliser, post-processor …
        # … and the truncation/padding last used, which a call with
        # truncation=True changes; it is passed per call, not an identity.
        state.pop("truncation", None)
        state.pop("padding", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    else:  # a slow tokenizer: its vocabulary is the best identity it offers
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps(tokenizer.chat_template or sft.FALLBACK_TEMPLATE, sort_keys=True).encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _code_identity() -> str:
    digest = hashlib.sha256(FORMAT.encode())
    here = Path(__file__).resolve().parent
    for name in _SOURCES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def cache_key(task: str, path: Path, *, tokenizer, max_length: int, loss_on_prompt: bool,
              text_split: str) -> str:
    parts = {"data": file_sha256(path), "tokenizer": tokenizer_identity(tokenizer), "code": _code_identity(),
             "task": task, "max_length": max_length, "loss_on_prompt": loss_on_prompt and task == "sft",
             "text_split": text_split if task == "pretrain" else ""}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _save(data: TaskData, file: Path) -> None:
    import torch
    from safetensors.torch import save_file

    pairs = bool(data.items) and isinstance(data.items[0], preference.PreferenceExample)
    completions = bool(data.items) and isinstance(data.items[0], unpaired.UnpairedExample)
    # A pair is stored as two sft items in a row, chosen then rejected; an unpaired completion as itself
    # then its mismatched twin.
    items = data.items
    if pairs:
        items = [side for pair in data.items for side in (pair.chosen, pair.rejected)]
    elif completions:
        items = [side for item in data.items for side in (item.completion, item.mismatched)]
    lengths = [len(item.input_ids) for item in items]
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    tensors = {"input_ids": torch.tensor([t for item in items for t in item.input_ids], dtype=torch.int64),
               "offsets": torch.tensor(offsets, dtype=torch.int64),
               "truncated": torch.tensor([item.truncated for item in items], dtype=torch.uint8),
               "row": torch.tensor([-1 if item.row is None else item.row for item in items], dtype=torch.int64)}
    if completions:
        tensors["desirable"] = torch.tensor([item.desirable for item in data.items], dtype=torch.uint8)
    classification = data.label2id is not None
    if classification:
        tensors["label"] = torch.tensor([item.label for item in items], dtype=torch.int64)
    else:
        tensors["labels"] = torch.tensor([t for item in items for t in item.labels], dtype=torch.int64)
    meta = {"format": FORMAT, "pairs": pairs, "unpaired": completions, "label2id": data.label2id,
            "rows_read": data.rows_read, "rows_dropped": data.rows_dropped, "truncated": data.truncated,
            "dropped_rows": list(data.dropped_rows)}
    partial = file.with_name(f"{file.name}.{os.getpid()}.partial")
    save_file(tensors, partial, metadata={"task_data": json.dumps(meta)})
    os.replace(partial, file)  # atomic: readers see the old entry, or none, or the whole new one


def _load(file: Path) -> TaskData:
    from safetensors import safe_open

    with safe_open(file, framework="pt") as f:
        meta = json.loads(f.metadata()["task_data"])
        if meta.get("format") != FORMAT:
            raise ValueError(f"cache format {meta.get('format')}")
        lists = {key: f.get_tensor(key).tolist() for key in f.keys()}
    offsets, ids, rows, truncated = lists["offsets"], lists["input_ids"], lists["row"], lists["truncated"]
    items = []
    for i in range(len(offsets) - 1):
        start, end = offsets[i], offsets[i + 1]
        row = None if rows[i] < 0 else rows[i]
        if meta["label2id"] is not None:
            items.append(classify.ClassificationExample(input_ids=ids[start:end], label=lists["label"][i],
                                                        truncated=bool(truncated[i]), row=row))
        else:
            items.append(sft.TokenizedExample(input_ids=ids[start:end], labels=lists["labels"][start:end],
                                              truncated=bool(truncated[i]), row=row))
    if meta["pairs"]:
        items = [preference.PreferenceExample(chosen=c, rejected=r, row=c.row) for c, r in zip(items[::2], items[1::2])]
    elif meta.get("unpaired"):
        items = [unpaired.UnpairedExample(completion=c, mismatched=m, desirable=bool(d), row=c.row)
                 for c, m, d in zip(items[::2], items[1::2], lists["desirable"])]
    return TaskData(items=items, label2id=meta["label2id"], rows_read=meta["rows_read"],
                    rows_dropped=meta["rows_dropped"], truncated=meta["truncated"],
                    dropped_rows=tuple(meta["dropped_rows"]))


def _evict(cache_dir: Path) -> None:
    entries = sorted(cache_dir.glob("*.safetensors"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[MAX_ENTRIES:]:
        old.unlink(missing_ok=True)


def load_task_data_cached(task: str, path: str | Path, *, name: str | None = None, tokenizer, max_length: int,
                          loss_on_prompt: bool = False, text_split: str = "paragraphs",
                          cache_dir: str | Path, progress=None) -> tuple[TaskData, str]:
    """``tasks.load_task_data``, served from ``cache_dir`` when the same data
    was tokenized the same way before. Returns the data and what the cache
    did: "hit", "stored", or "not stored: <why>" (a cache that cannot be
    written never fails a run)."""
    path = Path(path)
    if task == "grpo":  # prompts are rendered, never labelled: quick to read again, and hold answer texts
        data = load_task_data(task, path, name=name, tokenizer=tokenizer, max_length=max_length,
                              loss_on_prompt=loss_on_prompt, text_split=text_split, progress=progress)
        return data, "not stored: GRPO prompts are read afresh"
    cache_dir = Path(cache_dir)
    key = cache_key(task, path, tokenizer=tokenizer, max_length=max_length, loss_on_prompt=loss_on_prompt,
                    text_split=text_split)
    file = cache_dir / f"{task}-{key}.safetensors"
    if file.exists():
        from safetensors import SafetensorError

        try:
            data = _load(file)
        except (SafetensorError, OSError, ValueError, KeyError):
            pass  # unreadable or from an older format: tokenize again and overwrite it
        else:
            os.utime(file)  # most recently used
            if task == "sft":
                sft.ensure_chat_template(tokenizer)  # as tokenizing would have (the output saves the tokenizer)
            return data, "hit"
    data = load_task_data(task, path, name=name, tokenizer=tokenizer, max_length=max_length,
                          loss_on_prompt=loss_on_prompt, text_split=text_split, progress=progress)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _save(data, file)
        _evict(cache_dir)
    except OSError as exc:
        return data, f"not stored: {exc}"
    return data, "stored"
