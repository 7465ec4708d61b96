"""Prompts with reference answers, for GRPO (``tuning.grpo``).

Any instruction or chat dataset serves (the ``sft`` schemas: alpaca,
prompt/completion, chat, ShareGPT): each row's turns before its last reply
are the prompt, rendered through the chat template with the generation
prompt (as the model will be asked), and that last reply is the reference
answer the exact-match reward compares with. The model writes its own
completions during training, so nothing here carries labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tuning.data import readers, sft
from tuning.data.records import Paths
from tuning.errors import DatasetError

__all__ = ["PromptExample", "read_prompts", "collate_prompts"]


@dataclass(frozen=True)
class PromptExample:
    input_ids: list[int]  # the prompt, ending with the template's generation prompt
    answer: str  # the reference answer (the row's last reply)
    row: int | None = None  # the row within its file (for messages; rows of several files repeat)
    key: int = 0  # the row's position in the whole dataset, unique across files: how rewards find its answer
    truncated: bool = False
    messages: tuple[tuple[str, str], ...] = ()  # the prompt's turns (role, content), for a reward model


def read_prompts(path: Paths, tokenizer, *, name: str | None = None, max_length: int, schema: str | None = None,
                 mapping: dict[str, str] | None = None, file: str = "",
                 progress: Callable[[int, int], None] = lambda done, total: None
                 ) -> tuple[list[PromptExample], tuple[int, ...]]:
    """(the prompts that fit in max_length, the rows dropped: their prompt alone is longer)."""
    sft.ensure_chat_template(tokenizer)
    examples = readers.read_examples(path, name=name, schema=schema, mapping=mapping)
    kept, dropped = [], []
    for key, example in enumerate(examples):
        messages = [{"role": m.role, "content": m.content} for m in example.messages[:-1]]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(ids) < max_length:
            kept.append(PromptExample(input_ids=ids, answer=example.messages[-1].content, row=example.row, key=key,
                                      messages=tuple((m["role"], m["content"]) for m in messages)))
        else:
            dropped.append(example.row)
        progress(key + 1, len(examples))
    if not kept:
        raise DatasetError(f"every prompt is longer than max length {max_length}; raise max length", file=file)
    return kept, tuple(dropped)


def collate_prompts(batch: list[PromptExample], *, pad_token_id: int) -> dict:
    """The prompts left-padded (generation continues each from its last token), and each row's
    position in the whole dataset (``prompt_key``), which the reward functions use to find its answer."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, example in enumerate(batch):
        ids[i, width - len(example.input_ids):] = torch.tensor(example.input_ids)
        mask[i, width - len(example.input_ids):] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "prompt_key": torch.tensor([e.key for e in batch], dtype=torch.long)}
