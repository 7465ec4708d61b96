"""Benchmarks through lm-evaluation-harness (lm-eval 0.4): its
``simple_evaluate`` with its HF model class (``HFLM``) wrapped around the
model the studio already loaded (an adapter applied), so prompting, scoring
and standard errors are the harness's, not a copy of them.

The tasks are either generated from a dataset version's columns
(``tuning.harness_tasks``) or named harness tasks, which download their data
and so are refused on a worker without a network. The artifact is scored,
then its base model on the same tasks (an adapter switched off, or the base
loaded), one task at a time: a cancel lands between tasks or between two of
the harness's batches.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tuning.errors import ConfigError, TuningError
from tuning.events import EventSink, HarnessEvent, LogEvent, ProgressEvent
from tuning.harness_tasks import named_tasks, write_task

# The harness's metric keys are "<metric>,<filter>"; the generated tasks use these filters.
PLAIN_FILTERS = ("none", "answer")
HUB_ENDPOINT = "https://huggingface.co"


class HarnessCancelled(Exception):
    """Raised from inside the harness's batch loop when the job is cancelled."""


@dataclass
class HarnessRun:
    status: str  # "succeeded" or "cancelled"
    scores: list  # one dict per (task, side): see task_scores


def hub_reachable(timeout_s: float = 3.0) -> str:
    """"" when the hub the harness downloads from answers, else why not."""
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{variable} is set"
    endpoint = os.environ.get("HF_ENDPOINT") or HUB_ENDPOINT
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return ""
    except OSError as exc:
        return f"{parts.hostname}:{port} cannot be reached ({exc.strerror or exc})"


def task_scores(results: dict, *, side: str) -> list[dict]:
    """The harness's results as rows: {task, side, n, metrics: {name: value},
    stderr: {name: value}, higher_is_better: {name: bool}}; a metric under
    another filter than the plain one is named "metric (filter)"."""
    rows = []
    for task, values in results["results"].items():
        metrics, stderr = {}, {}
        for key, value in values.items():
            if "," not in key or not isinstance(value, (int, float)):
                continue
            metric, filter_name = key.split(",", 1)
            target = stderr if metric.endswith("_stderr") else metrics
            metric = metric.removesuffix("_stderr")
            name = metric if filter_name in PLAIN_FILTERS else f"{metric} ({filter_name})"
            target[name] = round(float(value), 6)
        if not metrics:
            continue
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        directions = results.get("higher_is_better", {}).get(task, {})
        rows.append({"task": values.get("alias", task).strip(" -"), "side": side, "n": n,
                     "metrics": metrics, "stderr": stderr,
                     "higher_is_better": {name: bool(directions[name.split(" (")[0]])
                                          for name in metrics if name.split(" (")[0] in directions}})
    return rows


def _progress_lm_class():
    """HFLM that reports each batch of requests to the sink and stops on a cancel."""
    from lm_eval.models.huggingface import HFLM

    class ProgressLM(HFLM):
        def __init__(self, *args, report, **kwargs):
            super().__init__(*args, **kwargs)
            self.report = report  # report(done, total) -> True to stop
            self.done = self.total = 0

        def _requests(self, requests, run):
            self.done, self.total = 0, len(requests)
            result = run(requests)
            self.report(self.total, self.total)
            return result

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._requests(requests, lambda r: super(ProgressLM, self).loglikelihood(r, disable_tqdm=True))

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._requests(requests, lambda r: super(ProgressLM, self).generate_until(r, disable_tqdm=True))

        # One call per batch. Multiple-choice requests that share a context are scored in one row of a
        # batch (the harness's logits cache), so rows count requests up to that sharing.
        def _model_call(self, inps, *args, **kwargs):
            self._batch_done(inps.shape[0])
            return super()._model_call(inps, *args, **kwargs)

        def _model_generate(self, context, *args, **kwargs):
            self._batch_done(context.shape[0])
            return super()._model_generate(context, *args, **kwargs)

        def _batch_done(self, rows: int) -> None:
            if self.report(min(self.done, self.total), self.total):
                raise HarnessCancelled
            self.done += rows

    return ProgressLM


def _task_manager(config, directory: str):
    """(TaskManager, task names): the generated task alone, or the named ones checked against the harness."""
    from lm_eval.tasks import TaskManager

    if config.harness != "named_tasks":
        name = write_task(config, directory)
        return TaskManager(include_path=directory, include_defaults=False), [name]
    names = named_tasks(config)
    offline = hub_reachable()
    if offline:
        raise TuningError(f"Named harness tasks download their data from the Hub, and this worker has no network "
                          f"({offline}). Turn a dataset version into a harness task instead (benchmark "
                          f"multiple_choice or generate_until), or run on a worker with a network.")
    manager = TaskManager()
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise ConfigError({"harness_tasks": f"lm-evaluation-harness has no task {', '.join(unknown)} "
                                            f"(`lm_eval ls tasks` lists them)"})
    return manager, names


def _sides(config, model, tokenizer):
    """(side, context manager factory, model) for the artifact and, unless skipped, its base; a base
    model scored on its own (no artifact) is the base side alone."""
    if not config.artifact_path:
        yield "base", nullcontext, model
        return
    yield "artifact", nullcontext, model
    if config.skip_base:
        return
    if hasattr(model, "disable_adapter"):  # an adapter: its base is the same model with the adapter off
        yield "base", model.disable_adapter, model
    elif config.base_model:
        from tuning.models import load_model_for_task

        base = load_model_for_task("sft", config.base_model, tokenizer=tokenizer,
                                   trust_remote_code=config.trust_remote_code)
        yield "base", nullcontext, base.eval().to(model.device)


def run_harness(config, sink: EventSink) -> HarnessRun:
    import lm_eval

    from tuning.loading import load_language_model

    started = time.monotonic()
    sink.emit(LogEvent(message=f"Loading {Path(config.artifact_path or config.base_model).name}"))
    # the artifact (on its base, for an adapter), or with no artifact the base model itself (a hub id too)
    model, tokenizer = load_language_model(config.artifact_path, config.base_model,
                                           trust_remote_code=config.trust_remote_code)
    scores: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="harness-") as directory:
        manager, tasks = _task_manager(config, directory)
        progress_lm = _progress_lm_class()
        for side, context, side_model in _sides(config, model, tokenizer):
            for task in tasks:
                if sink.should_stop():
                    return HarnessRun(status="cancelled", scores=scores)
                phase = f"{task} · {side}"

                def report(done: int, total: int, phase=phase) -> bool:
                    elapsed = time.monotonic() - started
                    sink.emit(ProgressEvent(phase=phase, done=done, total=total, unit="requests",
                                            elapsed_s=round(elapsed, 2)))
                    return sink.should_stop()

                lm = progress_lm(pretrained=side_model, tokenizer=tokenizer, batch_size=config.batch_size,
                                 report=report)
                sink.emit(LogEvent(message=f"Running harness task {task} on the {side}"))
                try:
                    with context():
                        results = lm_eval.simple_evaluate(
                            model=lm, tasks=[task], task_manager=manager, log_samples=False,
                            num_fewshot=config.num_fewshot if config.harness == "named_tasks" else None,
                            limit=config.max_rows if config.harness == "named_tasks" else None,
                            apply_chat_template=config.chat_template, fewshot_as_multiturn=config.chat_template)
                except HarnessCancelled:
                    return HarnessRun(status="cancelled", scores=scores)
                rows = task_scores(results, side=side)
                scores.extend(rows)
                sink.emit(LogEvent(message=f"{side}: " + "; ".join(
                    f"{row['task']} " + ", ".join(f"{k} {v}" for k, v in row["metrics"].items()) for row in rows)))
    sink.emit(HarnessEvent(results=scores, mode=config.harness, tasks=tasks))
    return HarnessRun(status="succeeded", scores=scores)


def harness_summary(scores: list[dict]) -> str:
    """One line for the job page: each task's first metric, the artifact's then the base's (a base model
    scored on its own: the base's alone)."""
    by_task: dict[str, dict] = {}
    for row in scores:
        by_task.setdefault(row["task"], {})[row["side"]] = row
    parts = []
    for task, sides in by_task.items():
        if "artifact" not in sides:
            metric, value = next(iter(sides["base"]["metrics"].items()))
            parts.append(f"{task} {metric} {value:.4g} (base model)")
            continue
        metric, value = next(iter(sides["artifact"]["metrics"].items()))
        base = sides.get("base", {}).get("metrics", {}).get(metric)
        parts.append(f"{task} {metric} {value:.4g}" + (f" (base {base:.4g})" if base is not None else ""))
    return "; ".join(parts)
