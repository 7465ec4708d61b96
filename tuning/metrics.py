"""Metrics (pure Python): classification from predicted and true label ids;
exact match and ROUGE-L for generated text."""

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


def _normalise(text: str) -> list[str]:
    """Lower-cased words with punctuation at their ends stripped."""
    words = (word.strip(".,;:!?\"'()[]{}") for word in text.lower().split())
    return [word for word in words if word]


def exact_match(generated: str, expected: str) -> float:
    """1.0 when the answers are the same words (case and outer punctuation aside)."""
    return float(_normalise(generated) == _normalise(expected))


def rouge_l(generated: str, expected: str) -> float:
    """ROUGE-L F-measure (Lin 2004) over words: from the longest common
    subsequence, F = 2PR / (P + R) (beta = 1)."""
    a, b = _normalise(generated), _normalise(expected)
    if not a or not b:
        return float(a == b)
    previous = [0] * (len(b) + 1)
    for word in a:  # LCS by dynamic programming, one row at a time
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)
