"""A step of a merge search (the ``merge_search`` kind; studio/jobs/services_search.py).

Each time the search is sent to a worker it reads the scores its candidates'
jobs reported, reports each newly ended candidate once (a ``candidate``
event: the page's table and best-so-far chart), proposes and queues the next
generation when the current one is complete, and goes back to the queue
waiting for an unfinished candidate. With the budget spent it keeps the best
candidate's model and deletes the others' merged weights.
"""

from __future__ import annotations

from studio.jobs.models import Job, MergeSearchCandidate
from studio.jobs.services import job_cancel
from studio.jobs.services_search import (merge_search_candidates, merge_search_keep_best, merge_search_park,
                                         merge_search_reported, merge_search_submit, merge_search_sync,
                                         merge_search_unfinished_children)
from tuning.errors import TuningError
from tuning.events import LogEvent, ProgressEvent
from tuning.merge_search import CandidateEvent, MergeSearchConfig, best, propose


def _report(sink, candidates: list[MergeSearchCandidate], metric: str) -> None:
    """A candidate event for each candidate that ended and is not in the events yet, in index order (a later
    one waits for the earlier ones, so the best-so-far curve is drawn in order)."""
    for position, candidate in enumerate(candidates):
        if not candidate.outcome:
            return
        if candidate.reported:
            continue
        leader = best([c.score for c in candidates[:position + 1]], metric)
        event = CandidateEvent(index=candidate.index, generation=candidate.generation,
                               coefficients=candidate.coefficients, metric=metric, score=candidate.score,
                               message=candidate.message, best_index=leader,
                               best_score=None if leader is None else candidates[leader].score)
        merge_search_reported(candidate=candidate, sink=sink, event=event)


def _cancel_children(job: Job) -> None:
    for child in merge_search_unfinished_children(search=job):
        job_cancel(job=child)


def run_merge_search(job: Job, sink) -> tuple[str, str]:
    config = MergeSearchConfig.from_dict(job.config)
    while True:
        if sink.should_stop():
            _cancel_children(job)
            return "cancelled", "Cancelled; the candidates' unfinished jobs were cancelled"
        merge_search_sync(search=job, metric=config.metric)
        candidates = merge_search_candidates(search=job)
        _report(sink, candidates, config.metric)
        ended = sum(1 for c in candidates if c.outcome)
        sink.emit(ProgressEvent(phase="Scoring candidates", done=ended, total=config.budget, unit="candidates"))
        pending = [c for c in candidates if not c.outcome]
        if pending:
            state = merge_search_park(search_id=job.pk, waiting_for=pending[0].evaluate_job_id)
            if state == "parked":
                return "waiting", f"Waiting for candidate {pending[0].index}"
            continue  # it ended meanwhile (look again), or a cancel came (stop above)
        if len(candidates) >= config.budget:
            return _finish(job, sink, config, candidates)
        generation = len(candidates) // config.population  # every generation before it is complete
        scored = [[c.score for c in candidates[g * config.population:(g + 1) * config.population]]
                  for g in range(generation)]
        proposals = propose(config, scored)
        sink.emit(LogEvent(message=f"Generation {generation}: queueing {len(proposals)} candidate(s)"))
        merge_search_submit(search=job, generation=generation, proposals=proposals)


def _finish(job: Job, sink, config: MergeSearchConfig, candidates: list[MergeSearchCandidate]) -> tuple[str, str]:
    leader = best([c.score for c in candidates], config.metric)
    if leader is None:
        raise TuningError(f"no candidate could be scored; candidate 0: {candidates[0].message}")
    winner = candidates[leader]
    kept = merge_search_keep_best(search=job, best=winner)
    recipe = ", ".join(f"{name} {value:g}" for name, value in winner.coefficients.items())
    sink.emit(LogEvent(message=f"Best: candidate {winner.index} ({recipe}), {config.metric} {winner.score:g}; "
                               f"the other candidates' merged weights were deleted"))
    where = f"; model: artifact #{kept.pk}" if kept else ""
    return "succeeded", f"Best of {len(candidates)}: candidate {winner.index}, {config.metric} {winner.score:g} " \
                        f"({recipe}){where}"
