"""The forgetting check: did a tune lose what its base model knew?

Perplexity on a small general held-out text bundled with the studio (``tuning/heldout/general.txt``; its
source and licence in ``SOURCE.md`` beside it), measured with the base model and with the tuned one. A tune
that finds ordinary text much harder than its base did has forgotten some of it; the check warns when the
perplexity rises by more than ``threshold_pct`` percent (10 by default).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from tuning.errors import ConfigError
from tuning.events import EventSink, ForgettingEvent, LogEvent, ProgressEvent
from tuning.fields import config_from_dict, setting

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

    @classmethod
    def from_dict(cls, data: dict) -> "ForgettingConfig":
        return config_from_dict(cls, data)


@dataclass
class ForgettingResult:
    status: str
    perplexity_base: float = 0.0
    perplexity_tuned: float = 0.0
    change_pct: float = 0.0
    regressed: bool = False


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

    from tuning.judge import load_language_model

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
    regressed = change > config.threshold_pct
    sink.emit(ForgettingEvent(perplexity_base=round(base, 4), perplexity_tuned=round(tuned, 4),
                              change_pct=round(change, 2), threshold_pct=config.threshold_pct, regressed=regressed,
                              tokens=tokens, text=path.name))
    verdict = (f"Warning: the tune may have forgotten general knowledge: perplexity {change:+.1f}% "
               f"(threshold {config.threshold_pct:g}%)" if regressed else
               f"No forgetting beyond the threshold: perplexity {change:+.1f}% (threshold {config.threshold_pct:g}%)")
    sink.emit(LogEvent(message=f"{verdict}; base {base:.2f}, tuned {tuned:.2f} on {tokens} tokens",
                       level="warning" if regressed else "info"))
    return ForgettingResult(status="succeeded", perplexity_base=base, perplexity_tuned=tuned, change_pct=change,
                            regressed=regressed)
