"""``python -m tuning merge-search CONFIG.yaml``: a merge search in one
process, without the studio (which runs each candidate as child jobs
instead: studio/jobs/services_search.py, worker/search_runs.py).

Each candidate is merged into ``<output_dir>/candidate-<i>/`` and scored;
``search.json`` records every candidate's recipe and score as it is scored,
so a run started again with the same config goes on from there (a recorded
candidate is not merged again). At the end the best candidate's model is
kept and the others' merged weights are deleted; their recipes and scores
stay in ``search.json``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tuning.errors import TuningError
from tuning.events import ArtifactEvent, EventSink, LogEvent, ProgressEvent
from tuning.merge_search import (CandidateEvent, MergeSearchConfig, best, candidate_evaluate, candidate_merge,
                                 generations, propose, recipe, score_of)

RECORD = "search.json"


@dataclass
class MergeSearchResult:
    status: str  # "succeeded" or "cancelled"
    candidates: list[dict]  # {"index", "generation", "coefficients", "score", "message"}
    best_index: int | None = None
    output_path: str = ""  # the best candidate's model


class _ChildSink:
    """What a candidate's merge and evaluation report, as seen by the search: their log lines and progress,
    not their artifacts and scores (the search reports those as candidates)."""

    def __init__(self, sink: EventSink):
        self.sink = sink

    def emit(self, event) -> None:
        if isinstance(event, (LogEvent, ProgressEvent)):
            self.sink.emit(event)

    def should_stop(self) -> bool:
        return self.sink.should_stop()


def _recorded(path: Path, config: MergeSearchConfig) -> dict[int, dict]:
    """The candidates an earlier run of the same search recorded, by index."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if record.get("config") != _identity(config):
        return {}
    return {c["index"]: c for c in record.get("candidates", [])}


def _identity(config: MergeSearchConfig) -> dict:
    """What decides the candidates and their scores: a record made with other settings is not reused."""
    return {"method": config.method, "sources": config.sources, "base_model": config.base_model,
            "method_params": config.method_params, "search": config.search, "evaluate": config.evaluate,
            "dataset_path": config.dataset_path, "metric": config.metric, "population": config.population,
            "seed": config.seed}


def _write(path: Path, config: MergeSearchConfig, candidates: list[dict], best_index: int | None = None) -> None:
    data = {"config": _identity(config), "candidates": candidates, "best_index": best_index}
    if best_index is not None:
        data["best_recipe"] = recipe(config, candidates[best_index]["coefficients"])
    path.write_text(json.dumps(data, indent=1))


def _score_candidate(config: MergeSearchConfig, index: int, coefficients: dict, sink) -> tuple[float | None, str]:
    """Merge and score one candidate: (score, "") or (None, why it failed); (None, "cancelled") when stopped."""
    from tuning.merge import run_merge
    from tuning.scoring import run_evaluate

    child = _ChildSink(sink)
    try:
        merged = run_merge(candidate_merge(config, coefficients,
                                           output_dir=str(Path(config.output_dir) / f"candidate-{index}")), child)
        if merged.status != "succeeded":
            return None, "cancelled"
        scored = run_evaluate(candidate_evaluate(config, artifact_path=merged.output_path), child)
    except TuningError as exc:
        return None, str(exc)
    if scored.status != "succeeded":
        return None, "cancelled"
    score = score_of(scored.metrics, config.metric)
    return score, "" if score is not None else f"the evaluation reported no {config.metric}"


def run_merge_search(config: MergeSearchConfig, sink: EventSink) -> MergeSearchResult:
    if not config.output_dir:
        raise TuningError("output_dir: name the directory the candidates are merged into")
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = _recorded(out / RECORD, config)
    candidates: list[dict] = []
    scored: list[list[float | None]] = []
    for generation in range(generations(config)):
        scores = []
        for coefficients in propose(config, scored):
            index = len(candidates)
            earlier = record.get(index)
            if earlier and earlier["coefficients"] == coefficients:
                score, message = earlier["score"], earlier["message"]
                sink.emit(LogEvent(message=f"Candidate {index}: scored by an earlier run"))
            else:
                score, message = _score_candidate(config, index, coefficients, sink)
                if message == "cancelled":
                    sink.emit(LogEvent(message=f"Search cancelled during candidate {index}"))
                    return MergeSearchResult(status="cancelled", candidates=candidates)
            candidates.append({"index": index, "generation": generation, "coefficients": coefficients,
                               "score": score, "message": message})
            scores.append(score)
            _write(out / RECORD, config, candidates)
            leader = best([c["score"] for c in candidates], config.metric)
            sink.emit(CandidateEvent(index=index, generation=generation, coefficients=coefficients,
                                     metric=config.metric, score=score, message=message, best_index=leader,
                                     best_score=None if leader is None else candidates[leader]["score"]))
        scored.append(scores)
    leader = best([c["score"] for c in candidates], config.metric)
    if leader is None:
        raise TuningError(f"no candidate could be scored; the first said: {candidates[0]['message']}")
    for candidate in candidates:  # the losers' weights go; their recipes and scores stay in the record
        if candidate["index"] != leader:
            shutil.rmtree(out / f"candidate-{candidate['index']}", ignore_errors=True)
    _write(out / RECORD, config, candidates, leader)
    winner = candidates[leader]
    path = str(out / f"candidate-{leader}" / "model")
    sink.emit(ArtifactEvent(artifact_kind="model", path=path, metadata={
        "search": {"metric": config.metric, "score": winner["score"], "candidate": leader,
                   "recipe": recipe(config, winner["coefficients"])}}))
    return MergeSearchResult(status="succeeded", candidates=candidates, best_index=leader, output_path=path)
