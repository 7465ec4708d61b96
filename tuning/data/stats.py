"""Token statistics of a dataset as training will see it, and a small SVG
histogram of row lengths for the dataset page.

Lengths are counted on the chat-template rendering that ``sft`` trains on
(special tokens included), so "rows over max_length" here are exactly the
rows training truncates.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from html import escape

from tuning.data.readers import Example
from tuning.data.sft_batched import count_batched
from tuning.errors import ConfigError, DatasetError
from tuning.events import ProgressEvent

__all__ = ["TokenStats", "token_stats", "histogram_svg", "sink_progress"]


@dataclass(frozen=True, kw_only=True)
class TokenStats:
    """Lengths in tokens. ``histogram_edges`` has one more entry than
    ``histogram_counts``; bin i holds lengths in [edges[i], edges[i+1])."""

    rows: int
    total_tokens: int  # before truncation
    loss_tokens: int  # tokens that carry loss within max_length, in rows training keeps
    min_length: int
    median_length: float
    p95_length: int
    max_length_seen: int
    histogram_edges: list[int]
    histogram_counts: list[int]
    max_length: int  # the setting the estimate is for
    truncated_rows: int  # rows longer than max_length (cut)
    skipped_rows: int  # rows with no loss token within max_length: training leaves them out
    tokens_per_epoch: int  # tokens trained on per epoch, after truncation and skipping (before a validation split)
    epochs: int
    total_training_tokens: int  # tokens_per_epoch * epochs

    def to_dict(self) -> dict:
        return asdict(self)


def sink_progress(sink, *, phase: str, unit: str = "rows", every_s: float = 0.5) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback that emits ProgressEvent to ``sink``, at most every ``every_s``
    seconds (and always at the end) so a big dataset does not write an event per row."""
    started, last = time.monotonic(), [None]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and last[0] is not None and now - last[0] < every_s:
            return
        last[0] = now
        elapsed = now - started
        eta = elapsed / done * (total - done) if done else None
        sink.emit(ProgressEvent(phase=phase, done=done, total=total, unit=unit, elapsed_s=round(elapsed, 2),
                                eta_s=None if eta is None else round(eta, 2)))

    return progress


def _histogram(lengths: list[int], bins: int) -> tuple[list[int], list[int]]:
    """Integer-width bins from the shortest to the longest row: fewer than ``bins`` when the lengths span
    fewer values, so every bin is the same whole number of tokens wide."""
    low, high = min(lengths), max(lengths)
    width = max(1, math.ceil((high - low + 1) / bins))
    count = math.ceil((high - low + 1) / width)
    counts = [0] * count
    for length in lengths:
        counts[(length - low) // width] += 1
    return [low + i * width for i in range(count + 1)], counts


def token_stats(examples: list[Example], tokenizer, *, max_length: int, epochs: int = 1, bins: int = 20,
                loss_on_prompt: bool = False, file: str = "",
                progress: Callable[[int, int], None] | None = None) -> TokenStats:
    if max_length < 1 or epochs < 1 or bins < 1:
        raise ConfigError({name: "must be at least 1" for name, value in
                           (("max_length", max_length), ("epochs", epochs), ("bins", bins)) if value < 1})
    if not examples:
        raise DatasetError("no rows to measure; add at least one row", file=file)
    lengths, loss_tokens, truncated, skipped, per_epoch = [], 0, 0, 0, 0
    # Counted whole (no cut), a batch of rows at a time, then cut here: one pass gives both the true length
    # and the trained part, holding one batch of encodings at a time.
    for batch in count_batched(examples, tokenizer, loss_on_prompt=loss_on_prompt, file=file):
        for row in batch:
            lengths.append(row.length)
            truncated += row.length > max_length
            loss, trains = row.within(max_length)
            if trains:
                per_epoch += min(row.length, max_length)
                loss_tokens += loss
            else:
                skipped += 1  # no loss token within max_length: training leaves the row out
        if progress is not None:
            progress(len(lengths), len(examples))
    ordered = sorted(lengths)
    edges, counts = _histogram(lengths, bins)
    return TokenStats(rows=len(lengths), total_tokens=sum(lengths), loss_tokens=loss_tokens,
                      min_length=ordered[0], median_length=float(statistics.median(ordered)),
                      p95_length=ordered[math.ceil(0.95 * len(ordered)) - 1],  # nearest rank
                      max_length_seen=ordered[-1], histogram_edges=edges, histogram_counts=counts,
                      max_length=max_length, truncated_rows=truncated, skipped_rows=skipped,
                      tokens_per_epoch=per_epoch, epochs=epochs, total_training_tokens=per_epoch * epochs)


def histogram_svg(stats: TokenStats | dict, width: int = 480, height: int = 200) -> str:
    """A self-contained SVG bar chart of row lengths with a dashed line at max_length (at the edge, with
    an arrow, when max_length lies beyond the data). Every text is escaped; no script, no external file."""
    data = stats.to_dict() if isinstance(stats, TokenStats) else stats
    # Numbers only from here on (the dict may come back from storage): nothing else reaches the markup unescaped.
    edges, counts = [int(e) for e in data["histogram_edges"]], [int(c) for c in data["histogram_counts"]]
    limit = int(data["max_length"])
    left, right, top, bottom = 44, 12, 12, 36  # margins in px: room for the axis labels
    plot_w, plot_h = max(10, width - left - right), max(10, height - top - bottom)
    low, high = edges[0], edges[-1]
    tallest = max(counts) or 1

    def x(value: float) -> float:
        return left + (value - low) / (high - low) * plot_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" font-family="sans-serif" font-size="11">',
             f'<title>{escape(f"Row lengths in tokens: {sum(counts)} rows, max length {limit}")}</title>']
    for i, count in enumerate(counts):
        bar_h = count / tallest * plot_h
        span = f"{edges[i]}" if edges[i + 1] - edges[i] == 1 else f"{edges[i]}–{edges[i + 1] - 1}"
        label = escape(f"{span} tokens: {count} row{'s' * (count != 1)}")
        parts.append(f'<rect x="{x(edges[i]) + 0.5:.1f}" y="{top + plot_h - bar_h:.1f}" '
                     f'width="{max(0.5, x(edges[i + 1]) - x(edges[i]) - 1):.1f}" height="{bar_h:.1f}" '
                     f'fill="#4a7bd0"><title>{label}</title></rect>')
    base = top + plot_h
    parts += [f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#333"/>',
              f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#333"/>',
              f'<text x="{left}" y="{base + 14}" text-anchor="middle">{low}</text>',
              f'<text x="{left + plot_w}" y="{base + 14}" text-anchor="middle">{high}</text>',
              f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
              f'{escape("tokens per row")}</text>',
              f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{tallest}</text>',
              f'<text x="{left - 6}" y="{base}" text-anchor="end">0</text>',
              f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
              f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">rows</text>']
    marker = min(max(limit, low), high)
    note = "" if low <= limit <= high else (" →" if limit > high else " ←")
    mx = x(marker)
    parts += [f'<line x1="{mx:.1f}" y1="{top}" x2="{mx:.1f}" y2="{base}" stroke="#c0392b" stroke-width="1.5" '
              f'stroke-dasharray="4 3"/>',
              # The label sits on the side of the line with more room.
              f'<text x="{mx - 3 if mx > left + plot_w / 2 else mx + 3:.1f}" y="{top + 10}" '
              f'text-anchor="{"end" if mx > left + plot_w / 2 else "start"}" fill="#c0392b">'
              f'{escape(f"max length {limit}{note}")}</text>',
              "</svg>"]
    return "\n".join(parts)
