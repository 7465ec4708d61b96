"""The forgetting check: did a tune lose what its base model knew?

Perplexity on a small general held-out text bundled with the studio (``tuning/heldout/general.txt``; its
source and licence in ``SOURCE.md`` beside it), measured with the base model and with the tuned one. A tune
that finds ordinary text much harder than its base did has forgotten some of it; the check warns when the
perplexity rises by more than ``threshold_pct`` percent (10 by default).

With ``harness`` settings (an evaluate run's: named lm-evaluation-harness tasks, or a dataset version as a
multiple-choice or generate-until task; tuning.harness), the check also scores those tasks on the base and
the tune side by side, and warns when a task's score drops by more than the same percentage of the base's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from tuning.errors import ConfigError
from tuning.events import EventSink, ForgettingEvent, LogEvent, ProgressEvent
from tuning.fields import config_from_dict, config_to_dict, setting

HELDOUT_TEXT = Path(__file__).resolve().parent / "heldout" / "general.txt"
DEFAULT_THRESHOLD_PCT = 10.0


@dataclass(frozen=True, kw_only=True)
class ForgettingConfig:
    artifact_path: str = setting(help="Directory of the tuned adapter or model.")
    base_model: str = setting(help="The base model it was tuned from (directory or hub id): the reference, and "
                                   "what an adapter loads on.")
    threshold_pct: float = setting(DEFAULT_THRESHOLD_PCT, help="Warn when the tune's perplexity on the held-out "
                                   "text is more than this many percent above the base model's.", min=0.0,
                                   max=10000.0, basic=True)
    text_path: str = setting("", help="A text file to measure on instead of the studio's bundled general text.")
    max_length: int = setting(256, help="Tokens per window the text is cut into.", min=16, max=8192)
    trust_remote_code: bool = setting(False, help="Run model code shipped with the model (admins only).")
    # An evaluate run's harness settings (tuning.scoring.EvaluateConfig: harness, harness_tasks or
    # dataset_path with its columns, …), checked in from_dict; empty: perplexity only.
    harness: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "ForgettingConfig":
        if not isinstance(data, dict):
            return config_from_dict(cls, data)  # refused, saying what it must be
        config = config_from_dict(cls, {k: v for k, v in data.items() if k != "harness"})
        if not data.get("harness"):
            return config
        checked = config_to_dict(harness_config(config, data["harness"]))
        return replace(config, harness={k: v for k, v in checked.items() if k not in ("artifact_path", "base_model")})


def harness_config(config: ForgettingConfig, harness: dict):
    """The evaluate run that scores the harness tasks on the tune and its base; ConfigError names each
    bad setting as ``harness.<name>``."""
    from tuning.scoring import EvaluateConfig

    if not isinstance(harness, dict):
        raise ConfigError({"harness": "must be a mapping of evaluate settings, e.g. {harness: named_tasks, "
                                      "harness_tasks: arc_easy}"})
    values = {"dataset_path": "", **harness, "artifact_path": config.artifact_path,
              "base_model": config.base_model, "skip_base": False, "trust_remote_code": config.trust_remote_code}
    if values.get("harness", "off") == "off":
        raise ConfigError({"harness.harness": "name the benchmark: named_tasks, multiple_choice or "
                                              "generate_until"})
    if values["harness"] == "named_tasks" and not values["dataset_path"]:
        values["dataset_path"] = str(HELDOUT_TEXT)  # required by EvaluateConfig; named tasks bring their own data
    elif not values["dataset_path"]:
        raise ConfigError({"harness.dataset_path": "a generated harness task needs the dataset it is made from"})
    return config_from_dict(EvaluateConfig, values, prefix="harness.")


def harness_changes(scores: list[dict], threshold_pct: float) -> list[dict]:
    """Per task, its first metric on the base and on the tune: {task, metric, base, tuned, change_pct,
    regressed}; a drop (a rise, for a metric where lower is better) of more than ``threshold_pct`` percent
    of the base's score is a regression."""
    by_task: dict[str, dict] = {}
    for row in scores:
        by_task.setdefault(row["task"], {})[row["side"]] = row
    changes = []
    for task, sides in by_task.items():
        if "artifact" not in sides or "base" not in sides:
            continue
        metric, tuned = next(iter(sides["artifact"]["metrics"].items()))
        base = sides["base"]["metrics"].get(metric)
        if base is None:
            continue
        higher_is_better = sides["artifact"].get("higher_is_better", {}).get(metric, True)
        worse = (base - tuned) if higher_is_better else (tuned - base)
        # A base scoring 0 leaves no percentage to lose: only a worse absolute score counts then.
        change_pct = (tuned / base - 1) * 100 if base else (0.0 if tuned == base else math.copysign(100.0, tuned))
        regressed = worse > 0 and (not base or worse / abs(base) * 100 > threshold_pct)
        changes.append({"task": task, "metric": metric, "base": base, "tuned": tuned,
                        "change_pct": round(change_pct, 2), "regressed": regressed})
    return changes


@dataclass
class ForgettingResult:
    status: str
    perplexity_base: float = 0.0
    perplexity_tuned: float = 0.0
    change_pct: float = 0.0
    regressed: bool = False
    harness: list = field(default_factory=list)  # harness_changes: per task, base and tuned


def text_perplexity(model, tokenizer, text: str, *, max_length: int) -> tuple[float, int]:
    """Perplexity of ``text`` (cut into windows of ``max_length`` tokens, each scored on its own) and the
    number of tokens predicted."""
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    device = next(model.parameters()).device
    nll, predicted = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), max_length):
            window = ids[start:start + max_length]
            if len(window) < 2:
                continue
            tensor = torch.tensor([window], device=device)
            loss = model(input_ids=tensor, labels=tensor).loss.item()  # mean over the window's predicted tokens
            nll += loss * (len(window) - 1)
            predicted += len(window) - 1
    if not predicted:
        raise ConfigError({"text_path": "the held-out text is too short to measure (fewer than two tokens)"})
    return math.exp(min(nll / predicted, 50.0)), predicted


def run_forgetting(config: ForgettingConfig, sink: EventSink) -> ForgettingResult:
    import gc

    from tuning.loading import load_language_model

    started = time.monotonic()
    path = Path(config.text_path) if config.text_path else HELDOUT_TEXT
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError({"text_path": f"cannot read {path}: {exc.strerror}"}) from None
    figures = {}
    for done, (which, model_path) in enumerate((("base", ""), ("tuned", config.artifact_path)), 1):
        if sink.should_stop():
            return ForgettingResult(status="cancelled")
        sink.emit(LogEvent(message=f"Measuring the {which} model on {path.name}"))
        model, tokenizer = load_language_model(model_path, config.base_model,
                                               trust_remote_code=config.trust_remote_code)
        figures[which] = text_perplexity(model, tokenizer, text, max_length=config.max_length)
        del model
        gc.collect()
        sink.emit(ProgressEvent(phase="Measuring perplexity", done=done, total=2, unit="models",
                                elapsed_s=round(time.monotonic() - started, 2)))
    (base, tokens), (tuned, _) = figures["base"], figures["tuned"]
    change = (tuned / base - 1) * 100
    scores, changes = [], []
    if config.harness:
        from tuning.harness import run_harness

        run = run_harness(harness_config(config, config.harness), sink)
        if run.status != "succeeded":
            return ForgettingResult(status=run.status)
        scores, changes = run.scores, harness_changes(run.scores, config.threshold_pct)
    regressed = change > config.threshold_pct or any(c["regressed"] for c in changes)
    sink.emit(ForgettingEvent(perplexity_base=round(base, 4), perplexity_tuned=round(tuned, 4),
                              change_pct=round(change, 2), threshold_pct=config.threshold_pct, regressed=regressed,
                              tokens=tokens, text=path.name, harness=changes, harness_scores=scores))
    dropped = "".join(f"; {c['task']} {c['metric']} {c['base']:.4g} → {c['tuned']:.4g}" for c in changes
                      if c["regressed"])
    verdict = (f"Warning: the tune may have forgotten general knowledge: perplexity {change:+.1f}% "
               f"(threshold {config.threshold_pct:g}%){dropped}" if regressed else
               f"No forgetting beyond the threshold: perplexity {change:+.1f}% (threshold {config.threshold_pct:g}%)"
               + ("" if not changes else f", {len(changes)} harness task(s) within it"))
    sink.emit(LogEvent(message=f"{verdict}; base {base:.2f}, tuned {tuned:.2f} on {tokens} tokens",
                       level="warning" if regressed else "info"))
    return ForgettingResult(status="succeeded", perplexity_base=base, perplexity_tuned=tuned, change_pct=change,
                            regressed=regressed, harness=changes)
