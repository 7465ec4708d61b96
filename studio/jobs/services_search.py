"""Merge searches (tuning/merge_search.py): a parent job of kind
``merge_search`` whose candidates are child jobs on the queue, each a merge
followed by an evaluate step (a chain: the evaluation waits for its merge).

The parent never holds a worker while its children run: a step of it
(worker/search_runs.py) reads the scores that came in, proposes and queues
the next generation, and then goes back to the queue waiting for one
unfinished candidate (``merge_search_park``: queued, ``depends_on`` that
candidate's evaluate job); when that job ends, however it ends, the search
is sent to a worker again (``services_steps.job_release_dependents``). So
the children obey quotas and fair share like any job, a pool of one worker
runs the whole search, and a parent taken back from a lost worker finds its
candidates in ``MergeSearchCandidate`` rows, written with their child jobs
in one transaction: nothing scored is run again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from studio.artifacts.models import Artifact
from studio.jobs.models import Job, JobEvent, JobHold, MergeSearchCandidate, job_output_dir
from studio.jobs.services_steps import PENDING_INPUT, SEARCH_KIND, _common_base, _sources, job_create_merge
from studio.jobs.state import job_create, job_set_status
from studio.storage.files import directory_size
from tuning.config import config_to_dict
from tuning.errors import ConfigError
from tuning.merge.table import MERGE_METHODS
from tuning.merge_search import (MergeSearchConfig, candidate_evaluate, candidate_merge, midpoint, recipe,
                                 score_of)


def job_create_merge_search(*, user, team, artifacts: list[Artifact], method: str, search: dict,
                            method_params: dict, dataset, metric: str, evaluate: dict, budget: int = 12,
                            population: int = 4, seed: int = 0, name: str = "") -> Job:
    """Validate a search over ``artifacts`` (two or more of one base, the user's team's) scored on ``dataset``
    and queue its parent job. Raises ConfigError naming the field; stores nothing then."""
    from tuning.merge import check_merge_sources

    if len(artifacts) < 2:
        raise ConfigError({"sources": f"a search merges two or more artifacts of one base; {len(artifacts)} picked"})
    if dataset is None:
        raise ConfigError({"dataset": "pick the dataset every candidate is scored on"})
    base_model = _common_base(artifacts)
    config = MergeSearchConfig.from_dict({
        "method": method, "sources": _sources(artifacts, None), "base_model": base_model.ref,
        "method_params": method_params, "search": search, "evaluate": evaluate, "dataset_path": dataset.file.path,
        "metric": metric, "budget": budget, "population": population, "seed": seed,
        "trust_remote_code": settings.TRUST_REMOTE_CODE})
    task = config.evaluate.get("task", "sft")
    if task not in dataset.tasks:
        raise ConfigError({"evaluate.task": f"{dataset.name} is {dataset.schema} data, usable for "
                                            f"{', '.join(dataset.tasks)}; pick one of those tasks or another dataset"})
    check_merge_sources(candidate_merge(config, midpoint(config), output_dir=str(settings.MEDIA_ROOT)))
    label = f"Merge search ({MERGE_METHODS[config.method].label}): {', '.join(a.name for a in artifacts)}"
    return job_create(kind=SEARCH_KIND, team=team, owner=user, config=config_to_dict(config),
                      name=name or label, dataset=dataset, base_model=base_model, input_artifacts=artifacts,
                      progress_total=config.budget)


def merge_search_candidates(*, search: Job) -> list[MergeSearchCandidate]:
    return list(MergeSearchCandidate.objects.filter(search=search).select_related("merge_job", "evaluate_job"))


def merge_search_submit(*, search: Job, generation: int, proposals: list[dict]) -> list[MergeSearchCandidate]:
    """Queue a merge and an evaluate step per proposed candidate, and record each candidate with its jobs, in
    one transaction. Nothing is queued when the search is no longer running (a cancel came)."""
    config = MergeSearchConfig.from_dict(search.config)
    found = {a.pk: a for a in Artifact.objects.filter(pk__in=search.input_artifact_ids)}
    if missing := [pk for pk in search.input_artifact_ids if pk not in found]:
        raise ConfigError({"sources": f"artifact(s) {', '.join(map(str, missing))} of this search were deleted"})
    artifacts = [found[pk] for pk in search.input_artifact_ids]
    made = []
    with transaction.atomic():
        if not Job.objects.select_for_update().filter(pk=search.pk, status=Job.Status.RUNNING).exists():
            return []
        start = MergeSearchCandidate.objects.filter(search=search).count()
        for offset, coefficients in enumerate(proposals):
            index = start + offset
            what = recipe(config, coefficients)
            merge = job_create_merge(user=search.owner, team=search.team, artifacts=artifacts, method=config.method,
                                     method_params=what["method_params"], weights=what["weights"],
                                     name=f"{search.name}: candidate {index}", sources_checked=True)
            evaluate = candidate_evaluate(config, artifact_path=PENDING_INPUT.format(job_id=merge.pk),
                                          dataset_name=Path(search.dataset.file.name).name)
            scoring = job_create(kind=Job.Kind.EVALUATE, team=search.team, owner=search.owner,
                                 config=config_to_dict(evaluate), name=f"{search.name}: score candidate {index}",
                                 dataset=search.dataset, base_model=search.base_model, depends_on=merge)
            made.append(MergeSearchCandidate.objects.create(
                search=search, index=index, generation=generation, coefficients=coefficients, recipe=what,
                merge_job=merge, evaluate_job=scoring))
    return made


def _failure(candidate: MergeSearchCandidate) -> str:
    """Why a candidate has no score: its merge's failure if the merge failed, else its evaluation's."""
    for job in (candidate.merge_job, candidate.evaluate_job):
        if job is not None and job.status != Job.Status.SUCCEEDED:
            return f"job #{job.pk} {job.status}: {job.failure_message or 'no message'}"
    return "its jobs were deleted"


def merge_search_sync(*, search: Job, metric: str) -> None:
    """Read the score of every candidate whose evaluation ended since the last look."""
    for candidate in MergeSearchCandidate.objects.filter(search=search, outcome="").select_related(
            "merge_job", "evaluate_job"):
        scoring = candidate.evaluate_job
        if scoring is not None and not scoring.is_finished:
            continue
        event = None
        if scoring is not None and scoring.status == Job.Status.SUCCEEDED:
            event = JobEvent.objects.filter(job=scoring, kind="eval", superseded=False).order_by("-seq").first()
        score = score_of(event.data, metric) if event else None
        candidate.score = score
        candidate.outcome = "scored" if score is not None else "failed"
        candidate.message = "" if score is not None else (
            _failure(candidate) if event is None else f"the evaluation reported no {metric}")
        candidate.save(update_fields=["score", "outcome", "message"])


def merge_search_reported(*, candidate: MergeSearchCandidate, sink, event) -> None:
    """Emit a candidate's event and mark it reported in one transaction: each candidate once in the events,
    whichever attempt of the search reports it."""
    with transaction.atomic():
        sink.emit(event)
        MergeSearchCandidate.objects.filter(pk=candidate.pk).update(reported=True)


def merge_search_park(*, search_id: int, waiting_for: int) -> str:
    """Put a running search back in the queue until job ``waiting_for`` (a candidate's evaluation) ends:
    "parked"; "ended" when that job ended already (look again); "stopping" when a cancel came.

    The candidate's row is locked before it is read, so its end either comes before (and this sees it) or
    waits for this commit (and then finds the search waiting for it)."""
    with transaction.atomic():
        child = Job.objects.select_for_update().get(pk=waiting_for)
        if child.is_finished:
            return "ended"
        search = Job.objects.select_for_update().get(pk=search_id)
        if search.status != Job.Status.RUNNING:
            return "stopping"
        # Each wake-up is a claim that counts an attempt; a search is woken once per candidate, so its
        # attempts restart here and JOB_MAX_ATTEMPTS keeps counting lost workers only.
        JobHold.objects.filter(job_id=search_id).delete()
        job_set_status(search_id, Job.Status.QUEUED, message=f"Waiting for job #{child.pk} ({child.name})",
                       depends_on=child, attempts=0, worker_name="", heartbeat_at=None)
    return "parked"


def merge_search_is_candidate(*, job_id: int) -> bool:
    """Whether the job merges or scores a search's candidate (its owner is not told of each one)."""
    return MergeSearchCandidate.objects.filter(Q(merge_job_id=job_id) | Q(evaluate_job_id=job_id)).exists()


def merge_search_unfinished_children(*, search: Job) -> list[Job]:
    """The candidates' jobs that have not ended (what a cancel of the search cancels)."""
    ids = [pk for row in MergeSearchCandidate.objects.filter(search=search).values_list("merge_job", "evaluate_job")
           for pk in row if pk]
    return list(Job.objects.filter(pk__in=ids).exclude(status__in=Job.FINISHED))


def merge_search_keep_best(*, search: Job, best: MergeSearchCandidate) -> Artifact | None:
    """At the end: the best candidate's model is kept (its recipe written into the artifact's metadata); the
    other candidates' merged models are deleted, their scores and recipes stay in their rows."""
    kept = best.merge_job.artifacts.first() if best.merge_job else None
    if kept is not None:
        kept.metadata = {**kept.metadata, "search": {"job": search.pk, "candidate": best.index,
                                                    "metric": search.config["metric"], "score": best.score,
                                                    "recipe": best.recipe}}
        kept.save(update_fields=["metadata"])
    for candidate in MergeSearchCandidate.objects.filter(search=search).exclude(pk=best.pk).select_related(
            "merge_job"):
        if candidate.weights_deleted or candidate.merge_job is None:
            continue
        for artifact in Artifact.everything.filter(job=candidate.merge_job):
            shutil.rmtree(artifact.path, ignore_errors=True)
            artifact.delete()
        Job.objects.filter(pk=candidate.merge_job_id).update(
            disk_bytes=directory_size(job_output_dir(candidate.merge_job_id)))
        candidate.weights_deleted = True
        candidate.save(update_fields=["weights_deleted"])
    return kept
