"""Evolutionary merge search: the coefficients of a merge, chosen by scores.

Sakana AI's evolutionary model merge (Akiba et al., 2025, "Evolutionary
optimization of model merging recipes", arXiv:2403.13187) searches the
parameters of a TIES/DARE merge with CMA-ES against a task metric. Here the
same: a search names the sources and a merge method (task arithmetic, TIES,
DARE), which coefficients to search and their ranges (each source's weight
``weight.<i>``, the method's ``scaling`` and, for TIES and DARE, ``density``),
the evaluate metric and data to score on, a budget in candidates and a
population per generation. CMA-ES (the ``cma`` package) proposes each
generation; every candidate is one merge and one evaluation.

The proposer keeps no state of its own: generation ``g`` is a function of
the seed and the scores of the generations before it (CMA-ES is replayed
from the seed: ``propose``). A search interrupted anywhere therefore goes
on from the candidates already scored and proposes exactly what it would
have proposed, re-running none. The studio runs each candidate as two
child jobs (studio/jobs/services_search.py); ``python -m tuning
merge-search`` runs them in turn in one process (tuning/merge_search_run.py).

Nothing here imports torch: the web process validates a search with it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

from tuning.errors import ConfigError
from tuning.events import Event
from tuning.fields import config_from_dict, field_specs, setting

SEARCH_METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
# Metric -> "min" (lower is better) or "max"; what an evaluate run reports (tuning.scoring).
METRICS = {"eval_loss": "min", "perplexity": "min", "exact_match": "max", "rouge_l": "max", "accuracy": "max",
           "f1": "max"}
TASK_CHOICES_SEARCHED = ("sft", "pretrain", "classify")  # the evaluate tasks a candidate may be scored as
METRIC_TASKS = {"eval_loss": ("sft", "pretrain", "classify"), "perplexity": ("sft", "pretrain"),
                "exact_match": ("sft",), "rouge_l": ("sft",), "accuracy": ("classify",), "f1": ("classify",)}
# The method settings a search may vary (each a float setting of the method's own dataclass).
SEARCHABLE_PARAMS = ("scaling", "density")
WEIGHT_RANGE = (-3.0, 3.0)  # a source weight beyond ±3 overshoots any task vector a user would want
# What the studio fills in for every candidate's evaluation; the rest are the user's evaluate settings.
EVALUATE_FILLED = ("artifact_path", "base_model", "dataset_path", "dataset_name", "trust_remote_code")
CMA_SIGMA0 = 0.25  # initial step, in units of each coefficient's range (CMA-ES' usual quarter of the domain)


@dataclass(frozen=True, kw_only=True)
class MergeSearchConfig:
    method: str = setting("task_arithmetic", help="Merge method whose coefficients are searched.",
                          choices=SEARCH_METHODS, basic=True)
    sources: list = field(default_factory=list)  # as MergeConfig's: [{"path", "base"?}], two or more
    base_model: str = setting(help="Local directory of the sources' common base model.", basic=True)
    method_params: dict = field(default_factory=dict)  # the method's settings that are not searched
    search: dict = field(default_factory=dict)  # {"weight.0": [low, high], "scaling": [low, high], …}
    evaluate: dict = field(default_factory=dict)  # EvaluateConfig settings (task, max_rows …) for every candidate
    dataset_path: str = setting(help="Dataset file every candidate is scored on.")
    metric: str = setting("eval_loss", help="The evaluate score the search optimises (loss and perplexity lower, "
                                            "the others higher).", choices=tuple(METRICS), basic=True)
    budget: int = setting(12, help="Candidates merged and scored in all.", min=2, max=500, basic=True)
    population: int = setting(4, help="Candidates per generation (CMA-ES' λ).", min=2, max=64, basic=True)
    seed: int = setting(0, help="Seed of the search: the same seed and scores propose the same candidates.",
                        min=0, max=2**31 - 2)
    output_dir: str = setting("", help="Directory the candidates' merges are written into (the CLI's).")
    trust_remote_code: bool = setting(False, help="Run model code shipped with the models (admins only).")

    @classmethod
    def from_dict(cls, data: dict) -> "MergeSearchConfig":
        data = dict(data)
        parts = {name: data.pop(name, None) for name in ("sources", "method_params", "search", "evaluate")}
        errors: dict[str, str] = {}
        try:
            config = config_from_dict(cls, data)
        except ConfigError as exc:
            errors.update(exc.errors)
            config = None
        sources = parts["sources"] if isinstance(parts["sources"], list) else []
        if len(sources) < 2:
            errors["sources"] = f"a search merges two or more sources of one base; {len(sources)} given"
        method = (config.method if config else data.get("method")) or "task_arithmetic"
        method_params = parts["method_params"] or {}
        search = _search_ranges(parts["search"], method, len(sources), method_params, errors)
        evaluate = _evaluate_settings(parts["evaluate"], config.metric if config else "", errors)
        if config and config.population > config.budget:
            errors["population"] = f"a generation of {config.population} is more than the budget ({config.budget})"
        if errors:
            raise ConfigError(errors)
        config = dataclasses.replace(config, sources=[_source(s) for s in sources], method_params=method_params,
                                     search=search, evaluate=evaluate)
        # The middle of the space and each range's ends as merges: a value the method refuses (DARE's density
        # 0) is refused now, naming the range, not when the search reaches it.
        middle = midpoint(config)
        corners = [(None, middle)] + [(name, {**middle, name: end}) for name, low, high in space(config)
                                      for end in (low, high)]
        for name, coefficients in corners:
            try:
                candidate_merge(config, coefficients, output_dir=config.output_dir or "unused")
            except ConfigError as exc:
                if name is None:
                    raise ConfigError(exc.errors) from None
                raise ConfigError({f"search.{name}": f"at {coefficients[name]:g}: {message}"
                                   for message in exc.errors.values()}) from None
        return config


def _source(source) -> dict:
    return {"path": source} if isinstance(source, str) else dict(source)


def _searchable(method: str) -> dict[str, tuple[float, float]]:
    """The method's settings a search may vary, with their allowed ranges."""
    from tuning.merge.table import MERGE_METHODS

    specs = field_specs(MERGE_METHODS[method].params)
    return {s.name: (s.min, s.max) for s in specs if s.name in SEARCHABLE_PARAMS}


def _search_ranges(search, method: str, n_sources: int, method_params: dict, errors: dict) -> dict:
    if not isinstance(search, dict) or not search:
        errors["search"] = ("name at least one coefficient to search with its range, e.g. "
                            "{\"weight.0\": [0, 1], \"weight.1\": [0, 1]}")
        return {}
    allowed = {f"weight.{i}": WEIGHT_RANGE for i in range(n_sources)}
    if method in SEARCH_METHODS:
        allowed.update(_searchable(method))
    clean = {}
    for name, bounds in search.items():
        where = f"search.{name}"
        if name not in allowed:
            errors[where] = f"not a coefficient of this search; choose from {', '.join(allowed)}"
            continue
        if name in method_params:
            errors[where] = f"{name} is both searched and fixed in method_params; drop one"
            continue
        try:
            low, high = (float(b) for b in bounds)
        except (TypeError, ValueError):
            errors[where] = "must be a range [low, high] of two numbers"
            continue
        floor, ceiling = allowed[name]
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            errors[where] = f"the low end ({low:g}) must be below the high end ({high:g})"
        elif low < floor or high > ceiling:
            errors[where] = f"must lie within [{floor:g}, {ceiling:g}]"
        else:
            clean[name] = [low, high]
    return clean


def _evaluate_settings(values, metric: str, errors: dict) -> dict:
    """The user's evaluate settings, checked as an evaluate job's (tuning.scoring.EvaluateConfig)."""
    from tuning.scoring import EvaluateConfig

    values = dict(values or {})
    if filled := sorted(set(values) & set(EVALUATE_FILLED)):
        errors["evaluate"] = f"{', '.join(filled)} are filled in by the search; leave them out"
        return {}
    if values.get("harness", "off") != "off":
        errors["evaluate.harness"] = "a search scores with the studio's own scores (loss, exact match …): harness off"
        return {}
    try:
        config = EvaluateConfig.from_dict({**values, "artifact_path": "candidate", "dataset_path": "data"})
    except ConfigError as exc:
        errors.update({f"evaluate.{name}": message for name, message in exc.errors.items()})
        return {}
    if metric and config.task not in METRIC_TASKS[metric]:
        errors["metric"] = (f"an evaluation of task {config.task} does not report {metric}; pick one of "
                            f"{', '.join(m for m, tasks in METRICS.items() if config.task in METRIC_TASKS[m])}")
    elif metric in ("exact_match", "rouge_l") and not config.generate_rows:
        errors["metric"] = f"{metric} compares generated answers: set evaluate.generate_rows above 0"
    return values


def space(config: MergeSearchConfig) -> list[tuple[str, float, float]]:
    """The searched coefficients in a fixed order (source weights by index, then settings by name): stored
    JSON may come back with its keys in another order, and the proposer's coordinates must not move."""
    def order(name: str):
        return (0, int(name.split(".")[1]), "") if name.startswith("weight.") else (1, 0, name)

    return [(name, *config.search[name]) for name in sorted(config.search, key=order)]


def midpoint(config: MergeSearchConfig) -> dict[str, float]:
    return {name: (low + high) / 2 for name, low, high in space(config)}


def recipe(config: MergeSearchConfig, coefficients: dict[str, float]) -> dict:
    """What a candidate merges: the method, one weight per source and the method's settings."""
    weights = [float(coefficients.get(f"weight.{i}", source.get("weight", 1.0)))
               for i, source in enumerate(config.sources)]
    params = {**config.method_params, **{k: v for k, v in coefficients.items() if not k.startswith("weight.")}}
    return {"method": config.method, "weights": weights, "method_params": params}


def candidate_merge(config: MergeSearchConfig, coefficients: dict[str, float], *, output_dir: str):
    """The MergeConfig of one candidate."""
    from tuning.merge.config import MergeConfig

    made = recipe(config, coefficients)
    sources = [{**{k: v for k, v in s.items() if k != "weight"}, "weight": w}
               for s, w in zip(config.sources, made["weights"])]
    return MergeConfig.from_dict({"method": config.method, "sources": sources, "base_model": config.base_model,
                                  "method_params": made["method_params"], "output_dir": output_dir,
                                  "trust_remote_code": config.trust_remote_code})


def candidate_evaluate(config: MergeSearchConfig, *, artifact_path: str, dataset_name: str = ""):
    """The EvaluateConfig that scores one candidate's merged model."""
    from tuning.scoring import EvaluateConfig

    return EvaluateConfig.from_dict({**config.evaluate, "artifact_path": artifact_path,
                                     "dataset_path": config.dataset_path, "dataset_name": dataset_name,
                                     "trust_remote_code": config.trust_remote_code})


def score_of(metrics: dict, metric: str) -> float | None:
    value = metrics.get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def is_better(score: float, than: float | None, metric: str) -> bool:
    return than is None or (score < than if METRICS[metric] == "min" else score > than)


def best(scores: list[float | None], metric: str) -> int | None:
    """Index of the best score (the first of equals); None when none scored."""
    found = None
    for index, score in enumerate(scores):
        if score is not None and is_better(score, None if found is None else scores[found], metric):
            found = index
    return found


def generations(config: MergeSearchConfig) -> int:
    return math.ceil(config.budget / config.population)


def generation_size(config: MergeSearchConfig, generation: int) -> int:
    """Candidates of ``generation`` (the last one may be cut short by the budget)."""
    return max(0, min(config.population, config.budget - generation * config.population))


def propose(config: MergeSearchConfig, scored: list[list[float | None]]) -> list[dict[str, float]]:
    """The candidates of generation ``len(scored)``, given every score of the generations before it (None:
    the candidate failed). CMA-ES is replayed from the seed, so the answer depends on nothing else."""
    import numpy

    with warnings.catch_warnings():  # cma says at import that it draws no plots without matplotlib; none are drawn
        warnings.filterwarnings("ignore", message="Could not import matplotlib", category=UserWarning)
        import cma

    ranges = space(config)
    # cma refuses a one-dimensional search; an unused second coordinate keeps its algorithm unchanged.
    dims = max(2, len(ranges))
    options = {"popsize": config.population, "seed": config.seed + 1,  # cma reads seed 0 as "random"
               "bounds": [0.0, 1.0], "verbose": -9, "verb_log": 0, "verb_disp": 0}
    strategy = cma.CMAEvolutionStrategy([0.5] * dims, CMA_SIGMA0, options)
    for scores in scored:
        asked = strategy.ask()
        strategy.tell(asked, _objective(scores, config.metric))
    asked = strategy.ask()[:generation_size(config, len(scored))]
    return [{name: round(low + float(numpy.clip(x[i], 0.0, 1.0)) * (high - low), 6)
             for i, (name, low, high) in enumerate(ranges)} for x in asked]


def _objective(scores: list[float | None], metric: str) -> list[float]:
    """What CMA-ES minimises: the score, negated when higher is better; a failed candidate ranks last."""
    signed = [None if s is None else (s if METRICS[metric] == "min" else -s) for s in scores]
    worst = max((s for s in signed if s is not None), default=0.0)
    return [worst + 1.0 + abs(worst) if s is None else s for s in signed]


@dataclass(frozen=True, kw_only=True)
class CandidateEvent(Event):
    """A candidate of a merge search was scored (or failed): the search's table row and its chart's point."""

    kind: ClassVar[str] = "candidate"
    index: int  # 0-based, in the order proposed
    generation: int
    coefficients: dict
    metric: str
    score: float | None = None  # None: the candidate failed (``message`` says why)
    best_score: float | None = None  # the best score so far, this candidate included
    best_index: int | None = None
    message: str = ""
