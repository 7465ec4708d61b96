"""Events a run reports, and the sinks that receive them.

A run (training, merging, ...) never prints or writes progress itself: it
hands typed events to a sink. The CLI's sink prints JSON lines; the
worker's sink stores them in the database and pushes them to browsers.
The only thing that flows back is ``should_stop()`` (the cancel flag).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Protocol


@dataclass(frozen=True, kw_only=True)
class Event:
    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True, kw_only=True)
class LogEvent(Event):
    kind: ClassVar[str] = "log"
    message: str
    level: str = "info"


@dataclass(frozen=True, kw_only=True)
class MetricsEvent(Event):
    """One optimizer step. Times in seconds, memory in MiB."""

    kind: ClassVar[str] = "metrics"
    step: int
    total_steps: int
    epoch: float
    loss: float
    lr: float
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    tokens_seen: int | None = None  # non-padding tokens trained on so far, across resumes
    elapsed_s: float | None = None
    eta_s: float | None = None
    memory_mib: float | None = None
    # A term the method adds to the loss it trains on (AdaLoRA's orthogonality
    # penalty); ``loss`` is the task's loss without it.
    penalty: float | None = None
    # Preference task (tuning.preference): the step's mean implicit rewards of the chosen and
    # rejected replies, their margin, and the share of pairs whose chosen reward is higher.
    rewards_chosen: float | None = None
    rewards_rejected: float | None = None
    reward_margin: float | None = None
    reward_accuracy: float | None = None
    # KTO (tuning.preference_kto): the batch's estimate of the policy's KL divergence from the reference
    # (z₀); its reward accuracy is the share of completions whose reward has their label's sign.
    kl: float | None = None
    # GRPO (tuning.grpo): the step's mean reward, the mean spread within a prompt's group, each reward
    # function's mean ({name: mean}), the completions' mean length in tokens, and a few sampled
    # completions ([{"prompt", "completion", "reward"}]).
    reward_mean: float | None = None
    reward_std: float | None = None
    reward_parts: dict | None = None
    completion_length: float | None = None
    samples: list | None = None
    reward_baseline: float | None = None  # ReMax: the mean reward of the prompts' greedy answers


@dataclass(frozen=True, kw_only=True)
class EvalEvent(Event):
    """An evaluation on the validation split."""

    kind: ClassVar[str] = "eval"
    step: int
    eval_loss: float
    perplexity: float | None = None
    accuracy: float | None = None
    f1: float | None = None
    exact_match: float | None = None  # share of generated answers equal to the expected ones
    rouge_l: float | None = None  # mean ROUGE-L F-measure of generated answers
    reward_margin: float | None = None  # preference: mean chosen - rejected reward (accuracy: share above 0)
    rows: int | None = None  # rows scored
    samples: list | None = None  # a few {"expected", "generated"} pairs
    best: bool = False  # the lowest eval loss so far


@dataclass(frozen=True, kw_only=True)
class HarnessEvent(Event):
    """lm-evaluation-harness scores (tuning.harness): one {task, side ("artifact" or "base"), n,
    metrics: {name: value}, stderr: {name: value}} per task and side."""

    kind: ClassVar[str] = "harness"
    results: list
    mode: str  # the evaluate config's ``harness``: multiple_choice, generate_until or named_tasks
    tasks: list


@dataclass(frozen=True, kw_only=True)
class SamplesEvent(Event):
    """The golden prompts answered at ``step`` (0: before training): [{"prompt", "answer"}]."""

    kind: ClassVar[str] = "samples"
    step: int
    samples: list


@dataclass(frozen=True, kw_only=True)
class CheckpointEvent(Event):
    kind: ClassVar[str] = "checkpoint"
    step: int
    path: str


@dataclass(frozen=True, kw_only=True)
class ProgressEvent(Event):
    """Progress of a long step that is not a training step (reading a
    dataset, merging tensors, quantizing, evaluating, packing a download):
    ``done`` of ``total`` ``unit`` (e.g. "tensors", "rows", "batches")."""

    kind: ClassVar[str] = "progress"
    phase: str  # what is being done, shown above the bar: "Merging tensors"
    done: int
    total: int
    unit: str = ""
    elapsed_s: float | None = None
    eta_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class ArtifactEvent(Event):
    """A finished output (an adapter, a model) that outlives the run."""

    kind: ClassVar[str] = "artifact"
    artifact_kind: str
    path: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class JudgedEvent(Event):
    """A judged comparison's outcome (tuning.judge): ``summary`` holds the win/tie/loss counts of model B
    against model A with their intervals, ``pairs`` every prompt with both answers and both verdicts."""

    kind: ClassVar[str] = "judged"
    label_a: str
    label_b: str
    summary: dict
    pairs: list


@dataclass(frozen=True, kw_only=True)
class ForgettingEvent(Event):
    """A forgetting check (tuning.forgetting): perplexity on a general held-out text, base and tuned."""

    kind: ClassVar[str] = "forgetting"
    perplexity_base: float
    perplexity_tuned: float
    change_pct: float  # (tuned / base - 1) × 100: above zero, the tune finds general text harder
    threshold_pct: float
    regressed: bool
    tokens: int
    text: str  # the held-out text's name
    harness: list = field(default_factory=list)  # per harness task: tuning.forgetting.harness_changes
    harness_scores: list = field(default_factory=list)  # the harness's rows, both sides (tuning.harness)


def event_from_dict(kind: str, data: dict) -> Event:
    """The event a JSON line names (``{"kind", "data"}``, as StdoutSink prints it), rebuilt: how the worker
    reads what the rank processes of a multi-device run report (``tuning.distributed``)."""
    types = {cls.kind: cls for cls in (LogEvent, MetricsEvent, EvalEvent, HarnessEvent, SamplesEvent,
                                       CheckpointEvent, ProgressEvent, ArtifactEvent)}
    if kind not in types:
        raise ValueError(f"unknown event kind {kind!r}")
    return types[kind](**data)


class EventSink(Protocol):
    def emit(self, event: Event) -> None: ...

    def should_stop(self) -> bool: ...


class StdoutSink:
    """Prints one JSON object per line: {"seq", "kind", "data"}."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.seq = 0

    def emit(self, event: Event) -> None:
        self.seq += 1
        line = json.dumps({"seq": self.seq, "kind": event.kind, "data": event.to_dict()})
        print(line, file=self.stream, flush=True)

    def should_stop(self) -> bool:
        return False


class MemorySink:
    """Keeps events in a list; ``stop_after`` metrics events it asks to stop."""

    def __init__(self, stop_after: int | None = None):
        self.events: list[Event] = []
        self.stop_after = stop_after

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of_kind(self, kind: str) -> list[Event]:
        return [event for event in self.events if event.kind == kind]

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.of_kind("metrics")) >= self.stop_after
