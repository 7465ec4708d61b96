"""Holding rows out for evaluation."""

from __future__ import annotations

import random
from typing import TypeVar

from tuning.errors import ConfigError

T = TypeVar("T")


def split_validation(items: list[T], ratio: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, validation): ``round(len * ratio)`` items held out, at least one
    and never all. The choice depends only on (len, ratio, seed), and both
    parts keep the original order."""
    if not 0 <= ratio < 1:
        raise ConfigError({"validation_ratio": f"must be at least 0 and below 1 (got {ratio}); the rest is "
                                               f"needed for training"})
    if ratio == 0:
        return list(items), []
    if len(items) < 2:
        raise ConfigError({"validation_ratio": f"the data has {len(items)} usable row(s), too few to hold any out; "
                                               f"set the validation ratio to 0 or add rows"})
    count = min(max(1, round(len(items) * ratio)), len(items) - 1)
    held_out = set(random.Random(seed).sample(range(len(items)), count))
    return ([item for i, item in enumerate(items) if i not in held_out],
            [item for i, item in enumerate(items) if i in held_out])
