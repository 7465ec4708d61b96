"""Chart reads: loss sparklines for the job list and the curves, final
figures and configuration diff of the compare page. Callers pass jobs they
already got through ``job_list_for_user``; nothing here checks access."""

from __future__ import annotations

from django.db.models import Count, F, Q, Window
from django.db.models.functions import Mod, RowNumber
from django.utils import timezone

from studio.jobs.models import Job, JobEvent

SPARKLINE_POINTS = 50
SPARKLINE_WIDTH, SPARKLINE_HEIGHT = 100, 24  # the SVG viewBox, in its own units
CURVE_POINTS = 2000  # per curve on the compare page; the browser thins further to the chart's width
COMPARE_MIN, COMPARE_MAX = 2, 8
# Server paths: the job's own output directory always differs, and
# dataset_name / dataset_sha256 already say which data was used.
CONFIG_KEYS_NOT_COMPARED = {"output_dir", "dataset_path"}


def job_loss_sparklines(*, job_ids: list[int], points: int = SPARKLINE_POINTS) -> dict[int, str]:
    """SVG polyline points ("x,y x,y …") of each job's train loss by step.

    One query for all the jobs: the database numbers each job's metrics
    events (rank 1..n) and keeps the first and each rank where
    floor(rank * points / n) steps up, so about ``points`` evenly spaced
    events per job come back, whatever n is.
    """
    picked = (JobEvent.objects.filter(job_id__in=job_ids, kind="metrics", superseded=False)
              .annotate(rank=Window(RowNumber(), partition_by=F("job_id"), order_by=F("seq").asc()),
                        total=Window(Count("id"), partition_by=F("job_id")))
              .annotate(rest=Mod(F("rank") * points, F("total")))
              .filter(Q(rest__lt=points) | Q(rank=1))
              .values("pk"))
    # JSON is read only for the picked rows (a subquery of the same query)
    rows = (JobEvent.objects.filter(pk__in=picked).order_by("job_id", "seq")
            .values_list("job_id", "data__step", "data__loss"))
    curves: dict[int, list[tuple[float, float]]] = {}
    for job_id, step, loss in rows:
        if step is not None and loss is not None:
            curves.setdefault(job_id, []).append((step, loss))
    return {job_id: _polyline(curve) for job_id, curve in curves.items() if len(curve) >= 2}


def _polyline(curve: list[tuple[float, float]]) -> str:
    xs, ys = [x for x, _ in curve], [y for _, y in curve]
    x0, dx = min(xs), (max(xs) - min(xs)) or 1
    y0, dy = min(ys), (max(ys) - min(ys)) or 1
    pad = 1  # keep the stroke inside the box
    return " ".join(f"{(x - x0) / dx * SPARKLINE_WIDTH:.1f},"
                    f"{SPARKLINE_HEIGHT - pad - (y - y0) / dy * (SPARKLINE_HEIGHT - 2 * pad):.1f}"
                    for x, y in curve)


def compare_ids_parse(values: list[str]) -> tuple[list[int], str]:
    """Job ids from ``?ids=1,2,3`` (or repeated ``ids``), in the order given,
    without repeats, and a message when they cannot be compared."""
    ids: list[int] = []
    for part in ",".join(values).split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            return [], f"“{part}” is not a job number."
        if int(part) not in ids:
            ids.append(int(part))
    if not COMPARE_MIN <= len(ids) <= COMPARE_MAX:
        return ids, (f"Pick between {COMPARE_MIN} and {COMPARE_MAX} jobs to compare "
                     f"({len(ids)} {'was' if len(ids) == 1 else 'were'} given).")
    return ids, ""


def job_compare_curves(*, jobs: list[Job]) -> list[dict]:
    """Per job: train and eval loss as [step, tokens seen, loss] triples (train
    thinned to ``CURVE_POINTS``), and its final figures. One query."""
    rows = (JobEvent.objects.filter(job_id__in=[job.pk for job in jobs], kind__in=["metrics", "eval", "artifact"],
                                    superseded=False)
            .order_by("job_id", "seq")
            .values_list("job_id", "kind", "data__step", "data__loss", "data__eval_loss", "data__tokens_seen",
                         "data__tokens_per_s", "data__elapsed_s", "data__metadata__trainable_parameters"))
    by_job: dict[int, list] = {}
    for row in rows:
        by_job.setdefault(row[0], []).append(row[1:])
    return [_job_curves(job, by_job.get(job.pk, [])) for job in jobs]


def _job_curves(job: Job, rows: list) -> dict:
    train, evals, tokens_at_step = [], [], {}
    tokens, last_elapsed, trainable = 0.0, 0.0, None
    for kind, step, loss, eval_loss, tokens_seen, tokens_per_s, elapsed_s, trainable_parameters in rows:
        if kind == "metrics" and step is not None and loss is not None:
            if tokens_seen is not None:
                tokens = tokens_seen
            elif tokens_per_s is not None and elapsed_s is not None:
                # Older runs report only a rate: rate × time since the previous
                # step (a resumed run restarts its clock, hence the max).
                tokens += tokens_per_s * (elapsed_s - last_elapsed if elapsed_s >= last_elapsed else elapsed_s)
                last_elapsed = elapsed_s
            while train and train[-1][0] >= step:
                train.pop()  # a resumed run repeats the steps after its checkpoint
            tokens_at_step[step] = round(tokens)
            train.append([step, round(tokens), loss])
        elif kind == "eval" and step is not None and eval_loss is not None:
            evals.append([step, tokens_at_step.get(step, round(tokens)), eval_loss])
        elif kind == "artifact" and trainable_parameters is not None:
            trainable = trainable_parameters
    best = min(evals, key=lambda point: point[2]) if evals else None
    end = job.finished_at or (timezone.now() if job.started_at else None)
    return {
        "id": job.pk, "name": str(job), "url": job.get_absolute_url(), "status": job.status,
        "train": _thin(train, CURVE_POINTS), "eval": evals,
        "final_loss": train[-1][2] if train else job.last_loss,
        "best_eval_loss": best[2] if best else None, "best_eval_step": best[0] if best else None,
        "steps": train[-1][0] if train else job.progress_step, "tokens_seen": train[-1][1] if train else None,
        "duration_s": (end - job.started_at).total_seconds() if end and job.started_at else None,
        "trainable_parameters": trainable,
    }


def _thin(points: list, limit: int) -> list:
    """Every k-th point and the last, at most about ``limit``."""
    if len(points) <= limit:
        return points
    stride = -(-len(points) // limit)
    return points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])


def config_diff(configs: list[dict]) -> list[dict]:
    """The configuration keys whose values are not all equal, nested keys
    dotted ("method_params.rank"), with each value and whether it differs
    from the first job's. A key a job lacks shows as None."""
    flat = [_flatten(config) for config in configs]
    keys = sorted({key for config in flat for key in config} - CONFIG_KEYS_NOT_COMPARED)
    rows = []
    for key in keys:
        values = [config.get(key) for config in flat]
        if any(value != values[0] for value in values):
            rows.append({"key": key, "cells": [{"value": value, "differs": value != values[0]} for value in values]})
    return rows


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
