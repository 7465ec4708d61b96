"""GRPO's rewards, defined without code: each is a setting of the run
(``TrainConfig``), with a weight; a completion's reward is the weighted sum.

- exact match: the final answer extracted from the completion by
  ``answer_pattern`` (its first group, else the whole match; by default the
  last number) equals the one extracted the same way from the row's
  reference answer (or, where the pattern finds none there, the whole
  reference, trimmed). Numbers compare without thousands separators.
- format: ``format_pattern`` is found in the completion.
- length: the completion's token count is within [length_min, length_max].
- reward model: the score of a reward-model artifact (``tuning.reward``)
  for the prompt and the completion.

Pure Python (the web process checks the patterns with ``pattern_problem``);
``tuning.grpo.reward_functions`` picks the ones a run's settings turn on,
and loads the reward model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LAST_NUMBER = r"(-?\d[\d,]*(?:\.\d+)?)(?!.*\d)"  # the last number in the text


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable regular expression, or None."""
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"is not a regular expression: {exc}"
    return None


def extract(text: str, pattern: str) -> str | None:
    """The answer ``pattern`` finds in ``text`` (its first group, else the whole match), normalised."""
    found = re.search(pattern, text, re.DOTALL)
    if found is None:
        return None
    answer = found.group(1) if found.re.groups else found.group(0)
    answer = (answer or "").strip()
    return answer.replace(",", "") if re.fullmatch(r"-?[\d,]+(?:\.\d+)?", answer) else answer


def exact_match(completion: str, reference: str, pattern: str) -> float:
    answer = extract(completion, pattern)
    expected = extract(reference, pattern)
    return float(answer is not None and answer == (expected if expected is not None else reference.strip()))


def format_match(completion: str, pattern: str) -> float:
    return float(re.search(pattern, completion, re.DOTALL) is not None)


def length_within(tokens: int, low: int, high: int) -> float:
    return float(low <= tokens and (not high or tokens <= high))


@dataclass(frozen=True)
class Scored:
    """What a reward function sees of one completion."""

    messages: tuple[tuple[str, str], ...]  # the prompt's turns (role, content)
    completion: str
    tokens: int
    reference: str
