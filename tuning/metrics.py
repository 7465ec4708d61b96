"""Classification metrics from predicted and true label ids (pure Python)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence


def _check(predicted: Sequence[int], expected: Sequence[int]) -> None:
    if len(predicted) != len(expected):
        raise ValueError(f"{len(predicted)} predictions for {len(expected)} labels")


def accuracy(predicted: Sequence[int], expected: Sequence[int]) -> float:
    """Fraction of rows predicted right; 0.0 for no rows."""
    _check(predicted, expected)
    return sum(p == e for p, e in zip(predicted, expected)) / len(expected) if expected else 0.0


def macro_f1(predicted: Sequence[int], expected: Sequence[int], *, labels: Iterable[int] | None = None) -> float:
    """Unweighted mean of per-label F1 over ``labels`` (default: every label
    that occurs in either list, as scikit-learn does). A label never
    predicted and never expected would score 0/0; it counts as 0."""
    _check(predicted, expected)
    labels = sorted(set(predicted) | set(expected)) if labels is None else list(labels)
    if not labels:
        return 0.0
    right = Counter(p for p, e in zip(predicted, expected) if p == e)
    predicted_counts, expected_counts = Counter(predicted), Counter(expected)
    # F1 = 2TP / (2TP + FP + FN) = 2TP / (times predicted + times expected)
    scores = [2 * right[label] / (predicted_counts[label] + expected_counts[label])
              if predicted_counts[label] + expected_counts[label] else 0.0 for label in labels]
    return sum(scores) / len(scores)
