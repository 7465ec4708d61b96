"""Preference pairs: a prompt, the reply to prefer and the reply to avoid.

The ``preference`` schema (``schemas.preference``) says which columns hold
them and how a row becomes a ``PreferencePair``. For training, each pair
becomes two conversations rendered through the chat template exactly as
supervised fine-tuning renders one (``sft.tokenize_example``): the same
prompt followed by the chosen reply, and by the rejected one, with labels
only on the reply tokens (and its end-of-turn token). ``collate_pairs``
lays a batch out as TRL does: the chosen rows first, then the rejected rows
in the same order, right-padded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from tuning.data import sft
from tuning.data.records import Paths, dataset_files, read_all
from tuning.data.schema import Rows, task_rows
from tuning.data.schemas.conversation import Example, Message
from tuning.data.schemas.preference import PreferencePair
from tuning.data.sft import TokenizedExample
from tuning.errors import DatasetError

__all__ = ["PreferencePair", "PreferenceExample", "pair_rows", "iter_pairs", "read_pairs", "pair_examples",
           "tokenize_pair",
           "tokenize_pairs", "collate_pairs"]


@dataclass(frozen=True)
class PreferenceExample:
    """A tokenized pair. ``ref_logps`` holds the reference model's summed
    log-probabilities of (chosen, rejected) where they were computed once
    before training (``reference = precomputed``)."""

    chosen: TokenizedExample
    rejected: TokenizedExample
    row: int | None = None
    ref_logps: tuple[float, float] | None = None

    @property
    def input_ids(self) -> list[int]:
        """Both sequences' tokens: what the loop counts as tokens seen and length grouping sorts by."""
        return self.chosen.input_ids + self.rejected.input_ids

    @property
    def truncated(self) -> bool:
        return self.chosen.truncated or self.rejected.truncated


def pair_rows(path: Paths, *, name: str | None = None, schema: str | None = None,
              mapping: dict[str, str] | None = None, task: str = "preference") -> Rows:
    """The dataset read for preference (or a reward model, which takes pairs only): its detection, the
    schema it is read as, and its pairs."""
    return task_rows(task, path, name=name, schema=schema, mapping=mapping)


def iter_pairs(path: Paths, *, name: str | None = None, schema: str | None = None,
               mapping: dict[str, str] | None = None, task: str = "preference") -> Iterator[PreferencePair]:
    """Every row of the dataset as a PreferencePair, checked as it is read.
    ``mapping`` may name the columns: {"prompt": ..., "chosen": ..., "rejected": ..., "system": ...}."""
    yield from pair_rows(path, name=name, schema=schema, mapping=mapping, task=task).records


def read_pairs(path: Paths, *, name: str | None = None, schema: str | None = None,
               mapping: dict[str, str] | None = None, task: str = "preference") -> list[PreferencePair]:
    return read_all(iter_pairs(path, name=name, schema=schema, mapping=mapping, task=task),
                    dataset_files(path, name)[2])


def pair_examples(pair: PreferencePair) -> tuple[Example, Example]:
    """The pair as two conversations, (the prompt + the chosen reply, the prompt + the rejected one).
    Earlier assistant turns are prompt, shared by both sides: only the judged reply carries labels (as
    TRL's completion mask)."""
    context = tuple(replace(m, train=False) for m in pair.context)

    def side(reply: str) -> Example:
        return (Example(context + (Message("assistant", reply),), pair.row) if context
                else Example.from_pair(pair.prompt, reply, system=pair.system, row=pair.row))

    return side(pair.chosen), side(pair.rejected)


def tokenize_pair(pair: PreferencePair, tokenizer, *, max_length: int, file: str = "") -> PreferenceExample:
    chosen, rejected = (sft.tokenize_example(example, tokenizer, max_length=max_length, loss_on_prompt=False,
                                             file=file) for example in pair_examples(pair))
    return PreferenceExample(chosen=chosen, rejected=rejected, row=pair.row)


def usable(example: PreferenceExample) -> bool:
    """Both replies keep tokens to score within max_length, and they still differ there."""
    return (sft.has_labels(example.chosen) and sft.has_labels(example.rejected)
            and example.chosen.labels != example.rejected.labels)


def tokenize_pairs(pairs: list[PreferencePair], tokenizer, *, max_length: int, file: str = "",
                   progress: Callable[[int, int], None] = lambda done, total: None
                   ) -> tuple[list[PreferenceExample], tuple[int, ...]]:
    """(the usable pairs, the rows dropped): a pair whose prompt fills max_length, or whose replies become
    identical once cut to it, has nothing to compare."""
    kept, dropped = [], []
    for done, pair in enumerate(pairs, start=1):
        example = tokenize_pair(pair, tokenizer, max_length=max_length, file=file)
        (kept if usable(example) else dropped).append(example)
        progress(done, len(pairs))
    if not kept:
        raise DatasetError(f"no pair keeps two different replies within max length {max_length} (the prompts are "
                           f"longer, or the replies differ only after it); raise max length", file=file)
    return kept, tuple(e.row for e in dropped)


def collate_pairs(batch: list[PreferenceExample], *, pad_token_id: int) -> dict:
    """[chosen rows, then rejected rows] as padded tensors (input_ids,
    attention_mask, labels), plus ``ref_logps`` (2 × rows, same order)
    where the pairs carry precomputed reference log-probabilities."""
    import torch

    tensors = sft.collate([e.chosen for e in batch] + [e.rejected for e in batch], pad_token_id=pad_token_id)
    if all(e.ref_logps is not None for e in batch):
        tensors["ref_logps"] = torch.tensor([e.ref_logps[0] for e in batch] + [e.ref_logps[1] for e in batch],
                                            dtype=torch.float32)
    return tensors
