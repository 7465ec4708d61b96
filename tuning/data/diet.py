"""The data diet: make a smaller, cleaner dataset version from raw rows.

Every operation takes a list of raw rows (dicts as read from JSONL, all of
one schema) and returns ``(output, report)``: ``output`` is the new rows
(for ``split``, the pair ``(train_rows, validation_rows)``) and ``report``
a JSON-serialisable dict of what changed. Each is described in
``DIET_OPERATIONS`` (name, parameters with help/limits/defaults, the paper
it comes from), so the page builds its form from the table and the caller
records ``versioning.Lineage(operation=name, parameters=...)``;
``run_operation`` does all three in one call.

Near duplicates are found with ``embed.near_duplicate_groups`` (MinHash
over word shingles + LSH banding, shared with ``lint``). numpy is imported
lazily; torch is never needed here (embeddings come from the ``embed_fn``
the caller passes).
"""

from __future__ import annotations

import builtins
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

from tuning.data.embed import NUM_PERM, SHINGLE_WORDS, kmeans, lsh_parameters, near_duplicate_groups, row_text
from tuning.data.splits import split_validation
from tuning.data.versioning import Lineage, canonical_line, content_hash, row_key
from tuning.errors import ConfigError, DatasetError

__all__ = ["DIET_OPERATIONS", "DietOperation", "Param", "dedupe", "length_filter", "diverse_subsample",
           "random_subsample", "split", "merge", "run_operation"]

Progress = Callable[[int, int], None] | None
LISTED = 200  # row numbers a report lists; the counts are always complete

# ---------------------------------------------------------------- operations


def _listed(rows: list[int]) -> list[int]:
    return rows[:LISTED]


def dedupe(rows: list[dict], *, near: bool = False, threshold: float = 0.8,
           progress: Progress = None) -> tuple[list[dict], dict]:
    """Keep the first of every set of duplicates. Exact: equal after normalising every string
    (``normalise_text``). Near (also): MinHash Jaccard of word 3-grams of the row's text >= ``threshold``."""
    seen: dict[str, int] = {}
    kept: list[int] = []
    exact_removed: list[int] = []
    for index, row in enumerate(rows):
        key = row_key(row)
        if key in seen:
            exact_removed.append(index + 1)
        else:
            seen[key] = index
            kept.append(index)
    near_removed: list[int] = []
    if near:
        groups = near_duplicate_groups([row_text(rows[i]) for i in kept], threshold=threshold, progress=progress)
        drop = {kept[i] for group in groups for i in group[1:]}
        near_removed = sorted(i + 1 for i in drop)
        kept = [i for i in kept if i not in drop]
    bands, per_band = lsh_parameters(threshold)
    report = {"rows_before": len(rows), "rows_after": len(kept), "exact_removed": len(exact_removed),
              "near_removed": len(near_removed), "exact_removed_rows": _listed(exact_removed),
              "near_removed_rows": _listed(near_removed)}
    if near:
        report["method"] = (f"MinHash, {NUM_PERM} permutations over word {SHINGLE_WORDS}-grams; LSH with "
                            f"{bands} bands of {per_band} rows; pairs kept at estimated Jaccard >= {threshold}")
    return [rows[i] for i in kept], report


def _measure(row: dict, field: str, unit: str, tokenizer, index: int) -> int:
    if field == "*":
        text = row_text(row)
    elif field not in row:
        raise DatasetError(f"has no '{field}' column; pick a column every row has, or * for the whole row",
                           row=index + 1, field=field)
    else:
        value = row[field]
        text = value if isinstance(value, str) else row_text({field: value})
    if unit == "chars":
        return len(text)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def length_filter(rows: list[dict], *, field: str, unit: str = "chars", min: int | None = None,
                  max: int | None = None, tokenizer=None) -> tuple[list[dict], dict]:
    """Keep rows whose ``field`` (a column, or "*" for all the row's text) is ``min``..``max`` long
    (inclusive; None is open), counted in characters or in the base model's tokens."""
    if unit not in ("chars", "tokens"):
        raise ConfigError({"unit": f"must be chars or tokens (got {unit!r})"})
    if unit == "tokens" and tokenizer is None:
        raise ConfigError({"unit": "counting tokens needs the base model's tokenizer; pick a base model or count "
                                   "characters"})
    if min is not None and max is not None and min > max:
        raise ConfigError({"min": f"is above max ({min} > {max}); lower min or raise max"})
    lengths = [_measure(row, field, unit, tokenizer, i) for i, row in enumerate(rows)]
    too_short = [i + 1 for i, n in enumerate(lengths) if min is not None and n < min]
    too_long = [i + 1 for i, n in enumerate(lengths) if max is not None and n > max]
    drop = set(too_short) | set(too_long)
    kept = [row for i, row in enumerate(rows) if i + 1 not in drop]
    return kept, {"rows_before": len(rows), "rows_after": len(kept), "too_short": len(too_short),
                  "too_long": len(too_long), "too_short_rows": _listed(too_short), "too_long_rows": _listed(too_long),
                  "unit": unit, "field": field}


def _check_n(n: int) -> None:
    if n < 1:
        raise ConfigError({"n": f"must be at least 1 (got {n})"})


def random_subsample(rows: list[dict], *, n: int, seed: int = 0) -> tuple[list[dict], dict]:
    """``n`` rows drawn uniformly without replacement, in their original order."""
    _check_n(n)
    chosen = sorted(random.Random(seed).sample(range(len(rows)), builtins.min(n, len(rows))))
    return [rows[i] for i in chosen], {"rows_before": len(rows), "rows_after": len(chosen)}


def diverse_subsample(rows: list[dict], *, n: int, seed: int = 0, embed_fn: Callable,
                      clusters: int | None = None, progress: Progress = None) -> tuple[list[dict], dict]:
    """``n`` rows spread over the data's topics: k-means over sentence embeddings of ``row_text``, each
    cluster giving rows in proportion to its size (at least one each while n allows), the rows nearest its
    centre first. ``clusters`` defaults to sqrt(rows). Same rows, embeddings and seed: same subsample."""
    import numpy as np

    _check_n(n)
    if n >= len(rows):
        return list(rows), {"rows_before": len(rows), "rows_after": len(rows), "clusters": 0}
    k = clusters or builtins.max(1, round(math.sqrt(len(rows))))
    if not 1 <= k <= len(rows):
        raise ConfigError({"clusters": f"must be between 1 and the number of rows ({len(rows)}); got {k}"})
    vectors = np.asarray(embed_fn([row_text(row) for row in rows]), dtype=np.float64)
    if vectors.shape[0] != len(rows):
        raise ValueError(f"embed_fn returned {vectors.shape[0]} vectors for {len(rows)} rows")
    if progress is not None:
        progress(1, 2)
    labels, centres = kmeans(vectors, k, seed=seed)
    sizes = np.bincount(labels, minlength=k)
    exact = n * sizes / len(rows)
    floor = 1 if n >= int((sizes > 0).sum()) else 0
    quota = np.minimum(sizes, np.maximum(floor * (sizes > 0), np.floor(exact))).astype(int)
    while quota.sum() > n:  # the one-per-cluster floor overshot: take back where it is most over its share
        quota[int(np.where(quota > 1, quota - exact, -np.inf).argmax())] -= 1
    while quota.sum() < n:  # largest remainder, among clusters with rows left
        quota[int(np.where(quota < sizes, exact - quota, -np.inf).argmax())] += 1
    chosen = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        distance = ((vectors[members] - centres[c]) ** 2).sum(axis=1)
        chosen.extend(int(i) for i in members[np.lexsort((members, distance))][:quota[c]])
    if progress is not None:
        progress(2, 2)
    chosen.sort()
    return [rows[i] for i in chosen], {"rows_before": len(rows), "rows_after": len(chosen), "clusters": k,
                                       "cluster_sizes": sizes.tolist(), "taken_per_cluster": quota.tolist()}


def split(rows: list[dict], *, validation_ratio: float, seed: int = 0,
          by_column: str | None = None) -> tuple[tuple[list[dict], list[dict]], dict]:
    """``((train_rows, validation_rows), report)``. Without ``by_column`` it holds out the same rows as the
    trainer's own split (``splits.split_validation``). With it, rows sharing that column's value (a
    conversation id, a source document) all land on one side, so the validation set is not leaked into
    training through near-identical siblings; the held-out share is then as close to the ratio as whole
    groups allow."""
    if not by_column:
        train, validation = split_validation(rows, validation_ratio, seed)
        return (train, validation), {"rows_before": len(rows), "train_rows": len(train),
                                     "validation_rows": len(validation)}
    if not 0 < validation_ratio < 1:
        raise ConfigError({"validation_ratio": f"must be above 0 and below 1 (got {validation_ratio})"})
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        if by_column not in row:
            raise DatasetError(f"has no '{by_column}' column; group by a column every row has",
                               row=index + 1, field=by_column)
        groups.setdefault(canonical_line({"v": row[by_column]}), []).append(index)
    if len(groups) < 2:
        raise ConfigError({"by_column": f"every row has the same '{by_column}', so no group can be held out; "
                                        f"pick another column or split without one"})
    order = sorted(groups)  # sorted first so the shuffle depends on the seed, not on row order
    random.Random(seed).shuffle(order)
    target = builtins.max(1, round(len(rows) * validation_ratio))
    held: set[int] = set()
    for position, key in enumerate(order[:-1]):  # the last group always trains: never hold everything out
        size = len(groups[key])
        if not held or abs(len(held) + size - target) < abs(len(held) - target):
            held.update(groups[key])
        if len(held) >= target:
            break
    train = [row for i, row in enumerate(rows) if i not in held]
    validation = [row for i, row in enumerate(rows) if i in held]
    return (train, validation), {"rows_before": len(rows), "train_rows": len(train),
                                 "validation_rows": len(validation), "groups": len(groups), "by_column": by_column}


def merge(datasets: list[list[dict]], schemas: list[str]) -> tuple[list[dict], dict]:
    """All rows of ``datasets`` in order. Refuses datasets of different schemas (``schemas[i]`` is the
    schema of ``datasets[i]``, as the readers detected it): their rows would not read as one file."""
    if len(datasets) != len(schemas):
        raise ConfigError({"schemas": f"give one schema per dataset ({len(datasets)} datasets, {len(schemas)} "
                                      f"schemas)"})
    if len(datasets) < 2:
        raise ConfigError({"datasets": "pick at least two datasets to merge"})
    if len(set(schemas)) > 1:
        listed = ", ".join(f"dataset {i + 1}: {s}" for i, s in enumerate(schemas))
        raise DatasetError(f"cannot merge datasets of different schemas ({listed}); convert them to one schema "
                           f"first, or merge only those with the same schema")
    merged = [row for rows in datasets for row in rows]
    return merged, {"rows_before": len(merged), "rows_after": len(merged), "schema": schemas[0],
                    "sources": [len(rows) for rows in datasets]}


# ---------------------------------------------------------------- the table


WANTED = {"bool": "true or false", "int": "a whole number", "float": "a number"}  # for error messages


@dataclass(frozen=True, kw_only=True)
class Param:
    name: str
    kind: str  # bool, int, float, str, choice
    default: object = None
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple = ()

    def check(self, value) -> str | None:
        """What is wrong with ``value``, or None."""
        types = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,), "choice": (str,)}[self.kind]
        if value is None:
            return None if self.default is None else "is required"
        if not isinstance(value, types) or (self.kind in ("int", "float") and isinstance(value, bool)):
            return f"must be {WANTED.get(self.kind, 'text')}"
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        if self.min is not None and value < self.min:
            return f"must be at least {self.min}"
        if self.max is not None and value > self.max:
            return f"must be at most {self.max}"
        return None


@dataclass(frozen=True, kw_only=True)
class DietOperation:
    name: str
    label: str
    description: str
    params: tuple[Param, ...]
    reference: str
    function: Callable
    needs: tuple[str, ...] = ()  # extra inputs the caller supplies: embed_fn, tokenizer

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "description": self.description, "reference": self.reference,
                "needs": list(self.needs), "params": [asdict(p) | {"choices": list(p.choices)} for p in self.params]}


DIET_OPERATIONS: dict[str, DietOperation] = {op.name: op for op in (
    DietOperation(
        name="dedupe", label="Remove duplicates", function=dedupe,
        description="Drops rows identical to an earlier row (ignoring case and spacing) and, optionally, rows "
                    "nearly identical to one (MinHash over word 3-grams); the first of each group stays.",
        reference="Lee et al. 2021, 'Deduplicating Training Data Makes Language Models Better'; "
                  "Broder 1997, 'On the resemblance and containment of documents' (MinHash)",
        params=(Param(name="near", kind="bool", default=False, help="also remove near duplicates"),
                Param(name="threshold", kind="float", default=0.8, min=0.5, max=1.0,
                      help="how similar (Jaccard of word 3-grams) two rows must be to count as near duplicates"))),
    DietOperation(
        name="length_filter", label="Filter by length", function=length_filter, needs=("tokenizer",),
        description="Keeps rows whose chosen column is within a length range, in characters or tokens.",
        reference="Common heuristic filtering, e.g. Raffel et al. 2020 (C4) and Rae et al. 2021 (Gopher rules)",
        params=(Param(name="field", kind="str", default="*", help="column to measure; * for the row's whole text"),
                Param(name="unit", kind="choice", default="chars", choices=("chars", "tokens"),
                      help="count characters, or tokens of the base model"),
                Param(name="min", kind="int", min=0, help="drop rows shorter than this (empty: no lower limit)"),
                Param(name="max", kind="int", min=1, help="drop rows longer than this (empty: no upper limit)"))),
    DietOperation(
        name="diverse_subsample", label="Diverse subsample", function=diverse_subsample, needs=("embed_fn",),
        description="Keeps n rows spread over every topic: clusters sentence embeddings with k-means and takes "
                    "from each cluster in proportion to its size, most typical rows first.",
        reference="Tirumala et al. 2023, 'D4: Improving LLM Pretraining via Document De-Duplication and "
                  "Diversification'; Abbas et al. 2023, 'SemDeDup'",
        params=(Param(name="n", kind="int", default=1000, min=1, help="rows to keep"),
                Param(name="seed", kind="int", default=0, min=0, help="same seed, same subsample"),
                Param(name="clusters", kind="int", min=1, help="number of topics to find (empty: sqrt of the rows)"))),
    DietOperation(
        name="random_subsample", label="Random subsample", function=random_subsample,
        description="Keeps n rows drawn at random, in their original order.",
        reference="Uniform sampling without replacement (a baseline for the other subsamplers)",
        params=(Param(name="n", kind="int", default=1000, min=1, help="rows to keep"),
                Param(name="seed", kind="int", default=0, min=0, help="same seed, same subsample"))),
    DietOperation(
        name="split", label="Train/validation split", function=split,
        description="Holds out a share of rows for validation, optionally keeping rows that share a column's "
                    "value (e.g. a conversation or document id) on one side.",
        reference="Grouped hold-out, as in scikit-learn's GroupShuffleSplit",
        params=(Param(name="validation_ratio", kind="float", default=0.1, min=0.01, max=0.5,
                      help="share of rows held out"),
                Param(name="seed", kind="int", default=0, min=0, help="same seed, same split"),
                Param(name="by_column", kind="str", help="keep rows with the same value here on one side"))),
    DietOperation(
        name="merge", label="Merge datasets", function=merge,
        description="Concatenates datasets of the same schema into one.", reference="",
        params=()),
)}


def run_operation(name: str, data, parameters: dict, *, parents: tuple[str, ...] = (), schemas=None,
                  embed_fn: Callable | None = None, tokenizer=None, progress: Progress = None):
    """Check ``parameters`` against the table, run the operation on ``data`` (rows; for merge, a list of
    datasets) and return ``(output, report, lineages)``: one Lineage per version made (split makes two,
    ``part`` "train" and "validation"). ConfigError lists every bad parameter at once."""
    operation = DIET_OPERATIONS.get(name)
    if operation is None:
        raise ConfigError({"operation": f"unknown operation '{name}'; choose one of {', '.join(DIET_OPERATIONS)}"})
    known = {p.name: p for p in operation.params}
    errors = {key: "is not a parameter of this operation" for key in parameters if key not in known}
    errors |= {p.name: message for p in operation.params if (message := p.check(parameters.get(p.name, p.default)))}
    if errors:
        raise ConfigError(errors)
    values = {p.name: parameters.get(p.name, p.default) for p in operation.params}
    extra = {"embed_fn": embed_fn, "tokenizer": tokenizer}
    if name == "merge":
        output, report = merge(data, schemas or [])
        rows_before = builtins.sum(len(rows) for rows in data)
    else:
        if "embed_fn" in operation.needs and embed_fn is None:
            raise ConfigError({"operation": f"{operation.label} needs a sentence encoder (embed_fn)"})
        kwargs = {**values, **{key: extra[key] for key in operation.needs}}
        if name in ("dedupe", "diverse_subsample"):
            kwargs["progress"] = progress
        output, report = operation.function(data, **kwargs)
        rows_before = len(data)
    parts = {"train": output[0], "validation": output[1]} if name == "split" else {"": output}
    lineages = [Lineage(parents=tuple(parents), operation=name, parameters=values, rows_before=rows_before,
                        rows_after=len(rows), result=content_hash(rows), report=report, part=part)
                for part, rows in parts.items()]
    return output, report, lineages
