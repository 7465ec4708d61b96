"""``run_merge(config, sink)``: the one entry point the CLI and the worker
call for a merge. It checks the sources, runs the method into a
``<produces>.partial`` directory, and renames it into place only when
complete, so a cancelled or failed run leaves no half-written output.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuning.events import ArtifactEvent, EventSink, LogEvent, ProgressEvent
from tuning.merge.config import MergeConfig
from tuning.merge.sources import Source, resolve_sources
from tuning.merge.table import MERGE_METHODS

PROGRESS_EVENTS = 20  # progress updates per run, plus the last one


class Cancelled(Exception):
    """The sink asked the run to stop."""


@dataclass
class MergeResult:
    status: str  # "succeeded" or "cancelled"
    output_path: str  # the output directory ("" when cancelled)
    method: str
    produces: str  # "model" or "adapter"
    size_bytes: int = 0
    elapsed_s: float = 0.0
    metadata: dict = field(default_factory=dict)


@dataclass
class MergeJob:
    """What a method's ``run`` gets: the config, its validated params, the
    resolved sources, the directory to write into and a scratch directory."""

    config: MergeConfig
    params: Any
    sources: list[Source]
    out: Path
    work: Path
    sink: EventSink
    started: float = field(default_factory=time.monotonic)
    _last: tuple = ("", -1)  # (phase, bucket) of the last progress event

    def check_stop(self) -> None:
        if self.sink.should_stop():
            raise Cancelled()

    def progress(self, done: int, total: int, phase: str = "Merging tensors", unit: str = "tensors") -> None:
        """Reports at most PROGRESS_EVENTS times per run, and always the last step."""
        bucket = done * PROGRESS_EVENTS // max(total, 1)
        if (phase, bucket) == self._last and done != total:
            return
        self._last = (phase, bucket)
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (total - done) if done else None
        self.sink.emit(ProgressEvent(phase=phase, done=done, total=total, unit=unit, elapsed_s=round(elapsed, 2),
                                     eta_s=None if eta is None else round(eta, 1)))


def run_merge(config: MergeConfig, sink: EventSink) -> MergeResult:
    from tuning.merge.card import write_merge_card
    from tuning.merge.check import check_merge_sources

    method = MERGE_METHODS[config.method]
    params = method.params(**config.method_params)
    check_merge_sources(config)
    sources = resolve_sources(config)
    output_dir = Path(config.output_dir)
    final = output_dir / method.produces
    out = output_dir / f"{method.produces}.partial"
    work = output_dir / "merge-work"
    for path in (out, work):
        shutil.rmtree(path, ignore_errors=True)  # left by an earlier attempt that died
        path.mkdir(parents=True)
    job = MergeJob(config=config, params=params, sources=sources, out=out, work=work, sink=sink)
    sink.emit(LogEvent(message=f"{method.label}: merging {len(sources)} source(s) on {config.base_model}: "
                               + ", ".join(f"{s.path} ({s.kind}, weight {s.weight:g})" for s in sources)))
    try:
        extra = method.run(job) or {}
    except Cancelled:
        shutil.rmtree(out, ignore_errors=True)
        sink.emit(LogEvent(message="Merge cancelled; the partial output was removed"))
        return MergeResult(status="cancelled", output_path="", method=method.name, produces=method.produces,
                           elapsed_s=time.monotonic() - job.started)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_merge_card(out, config=config, method=method, sources=sources)
    shutil.rmtree(final, ignore_errors=True)
    out.rename(final)
    size = sum(path.stat().st_size for path in final.rglob("*") if path.is_file())
    metadata = {"method": method.name, "params": dict(config.method_params),
                "sources": [{"path": str(s.path), "kind": s.kind, "weight": s.weight, "base": str(s.base)}
                            for s in sources],
                "size_bytes": size, "base_model": config.base_model, **extra}
    sink.emit(ArtifactEvent(artifact_kind=method.produces, path=str(final), metadata=metadata))
    elapsed = time.monotonic() - job.started
    sink.emit(LogEvent(message=f"Merged into {final} ({size / 2**20:.1f} MiB) in {elapsed:.1f} s"))
    return MergeResult(status="succeeded", output_path=str(final), method=method.name, produces=method.produces,
                       size_bytes=size, elapsed_s=elapsed, metadata=metadata)
