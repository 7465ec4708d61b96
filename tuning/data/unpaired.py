"""Unpaired completions for KTO: a prompt, one completion, and whether it
is desirable (the ``unpaired`` schema, ``schemas.unpaired``).

Each row is rendered through the chat template as supervised fine-tuning
renders a prompt and its reply (``sft.tokenize_example``: labels on the
reply and its end-of-turn token only). KTO also scores every prompt with a
*mismatched* completion, to estimate the policy's KL divergence from the
reference (the KTO paper's z₀). TRL builds those by rotating the
completions by one within each batch of its sequential sampler; here each
row's mismatched completion is the previous row's (in file order, the first
row takes the last one's), fixed once at tokenizing time. That keeps batches
free to be shuffled, resumes exact, and lets the reference score every
sequence once before training (``reference = precomputed``). The prompt and
the completion are joined as token ids, as TRL joins them.

Pairwise data trains KTO too (``unpair``): the chosen reply becomes a
desirable completion and the rejected one an undesirable completion of the
same prompt, as TRL's ``unpair_preference_dataset`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tuning.data import sft
from tuning.data.records import Paths, dataset_files, read_all
from tuning.data.schema import task_rows
from tuning.data.schemas.conversation import Example
from tuning.data.schemas.unpaired import UnpairedCompletion
from tuning.data.sft import IGNORE_INDEX, TokenizedExample
from tuning.errors import DatasetError

__all__ = ["UnpairedCompletion", "UnpairedExample", "read_completions", "tokenize_completions", "unpair",
           "collate_unpaired"]


@dataclass(frozen=True)
class UnpairedExample:
    """A tokenized completion and its mismatched twin (the same prompt, another row's completion).
    ``ref_logps`` holds the reference model's summed log-probabilities of (completion, mismatched)
    where they were computed once before training."""

    completion: TokenizedExample
    mismatched: TokenizedExample
    desirable: bool
    row: int | None = None
    ref_logps: tuple[float, float] | None = None

    @property
    def input_ids(self) -> list[int]:
        """The tokens trained on (what the loop counts and length grouping sorts by); the mismatched
        sequence is only scored, without gradients."""
        return self.completion.input_ids

    @property
    def truncated(self) -> bool:
        return self.completion.truncated


def read_completions(path: Paths, *, name: str | None = None, schema: str | None = None,
                     mapping: dict[str, str] | None = None) -> list:
    """Every row of the dataset as read for the preference task (UnpairedCompletion rows, or the
    PreferencePair rows of pairwise data: the caller tells them apart)."""
    rows = task_rows("preference", path, name=name, schema=schema, mapping=mapping)
    return read_all(rows.records, dataset_files(path, name)[2])


def _reply_start(example: TokenizedExample) -> int:
    """Where the reply starts: the first labelled token (everything before it is the prompt)."""
    return next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)


def with_mismatched(completions: list[TokenizedExample], desirable: list[bool], *,
                    max_length: int) -> list[UnpairedExample]:
    """Each completion with its prompt joined to the previous completion's reply (cut to max_length)."""
    out = []
    for index, example in enumerate(completions):
        other = completions[index - 1]  # index 0 takes the last one
        prompt, reply = _reply_start(example), _reply_start(other)
        ids = example.input_ids[:prompt] + other.input_ids[reply:]
        labels = [IGNORE_INDEX] * prompt + other.labels[reply:]
        mismatched = TokenizedExample(input_ids=ids[:max_length], labels=labels[:max_length],
                                      truncated=len(ids) > max_length, row=example.row)
        out.append(UnpairedExample(completion=example, mismatched=mismatched, desirable=desirable[index],
                                   row=example.row))
    return out


def tokenize_completions(rows: list[UnpairedCompletion], tokenizer, *, max_length: int, file: str = "",
                         progress: Callable[[int, int], None] = lambda done, total: None
                         ) -> tuple[list[UnpairedExample], tuple[int, ...]]:
    """(the usable completions, the rows dropped: their prompt fills max_length)."""
    kept, labels, dropped = [], [], []
    for done, row in enumerate(rows, start=1):
        example = sft.tokenize_example(Example.from_pair(row.prompt, row.completion, system=row.system, row=row.row),
                                       tokenizer, max_length=max_length, loss_on_prompt=False, file=file)
        if sft.has_labels(example):
            kept.append(example)
            labels.append(row.desirable)
        else:
            dropped.append(row.row)
        progress(done, len(rows))
    if not kept:
        raise DatasetError(f"no row keeps a completion token within max length {max_length} (the prompts are "
                           f"longer); raise max length", file=file)
    return with_mismatched(kept, labels, max_length=max_length), tuple(dropped)


def unpair(pairs: list, *, max_length: int) -> list[UnpairedExample]:
    """Preference pairs (``preference.PreferenceExample``) as unpaired completions: each pair's
    chosen reply desirable, its rejected one undesirable."""
    # All chosen replies, then all rejected ones: rotating by one then pairs each prompt with another
    # prompt's reply (a pair's own two replies would not be mismatched).
    completions = [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs]
    return with_mismatched(completions, [True] * len(pairs) + [False] * len(pairs), max_length=max_length)


def collate_unpaired(batch: list[UnpairedExample], *, pad_token_id: int) -> dict:
    """The completions as padded tensors (input_ids, attention_mask, labels), the mismatched
    sequences under ``kl_`` names, ``desirable`` (bool per row), and ``ref_logps`` / ``ref_kl_logps``
    where the reference scored them before training."""
    import torch

    tensors = sft.collate([e.completion for e in batch], pad_token_id=pad_token_id)
    mismatched = sft.collate([e.mismatched for e in batch], pad_token_id=pad_token_id)
    tensors |= {f"kl_{key}": value for key, value in mismatched.items()}
    tensors["desirable"] = torch.tensor([e.desirable for e in batch], dtype=torch.bool)
    if all(e.ref_logps is not None for e in batch):
        tensors["ref_logps"] = torch.tensor([e.ref_logps[0] for e in batch], dtype=torch.float32)
        tensors["ref_kl_logps"] = torch.tensor([e.ref_logps[1] for e in batch], dtype=torch.float32)
    return tensors
