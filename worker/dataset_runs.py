"""How the worker runs dataset work, the ``analyse`` and ``diet`` kinds of
job: analysis (preview through the chat template, token statistics, lint)
and operations that make new versions (diet steps, confirmed column
mappings, dropping flagged rows).

They run like every job (``worker.runner``): claimed from the queue, with a
heartbeat, progress as events on the job's stream, and taken back if the
worker is lost. The heavy reading and tokenizing happens here, never in the
web process; results are written through ``studio.datasets.services_work``.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from django.conf import settings

from studio.datasets.models import Dataset, DatasetAnalysis, DatasetOperation
from studio.datasets.selectors import dataset_data_files
from studio.datasets.services import dataset_describe_file
from studio.datasets.services_work import dataset_analysis_save, dataset_operation_store
from studio.jobs.models import Job
from tuning.data.chat_templates import use_chat_template
from tuning.data.system_prompts import describe_system_prompt
from tuning.data.stats import sink_progress
from tuning.errors import DatasetError

log = logging.getLogger(__name__)
PREVIEW_ROWS = 5
ENCODER_DIR = "models/all-minilm-l6-v2"  # under MEDIA_ROOT, where studio_setup puts the bundled encoder


class Cancelled(Exception):
    """The user cancelled; raised between phases (nothing half-made is stored)."""


class Phases:
    """Progress of dataset work as ``progress`` events: ``set_phase`` names
    the next phase (and stops here if the user cancelled); calling it with
    (done, total) is the ``progress`` callback the tuning functions take."""

    def __init__(self, sink):
        self.sink, self.report = sink, None

    def set_phase(self, phase: str, total: int = 0) -> None:
        if self.sink.should_stop():
            raise Cancelled()
        self.report = sink_progress(self.sink, phase=phase)
        self.report(0, total)

    def __call__(self, done: int, total: int) -> None:
        self.report(done, total)


def run_analysis(job: Job, sink) -> tuple[str, str]:
    analysis = DatasetAnalysis.objects.select_related("dataset", "base_model").get(job=job)
    try:
        _analyse(analysis, Phases(sink))
    except Cancelled:
        return "cancelled", "Cancelled; nothing was kept"
    return "succeeded", "Analysed"


def run_operation(job: Job, sink) -> tuple[str, str]:
    run = DatasetOperation.objects.select_related("dataset", "base_model", "created_by").get(job=job)
    # An earlier attempt stored its versions, then its worker was lost before the job ended: they are the
    # result (making them again would leave the first ones behind, made by no operation).
    versions = list(run.results.order_by("pk"))
    try:
        versions = versions or _operate(run, Phases(sink))
    except Cancelled:
        return "cancelled", "Cancelled; nothing was kept"
    made = ", ".join(f"{v.name} v{v.version} ({v.row_count} rows)" for v in versions)
    return "succeeded", f"Made {made}"


def _tokenizer(base_model):
    from tuning.models import load_tokenizer

    return load_tokenizer(base_model.ref, trust_remote_code=settings.TRUST_REMOTE_CODE)


def _is_text(dataset: Dataset) -> bool:
    return dataset.schema == "text" or dataset.format == "text"


def version_rows(dataset: Dataset) -> tuple[list[dict], list[int]]:
    """The version's rows as dicts, and each one's row number in its file (what findings cite).
    Plain text becomes one {"text"} row per document, as pre-training reads it."""
    from tuning.data import pretrain
    from tuning.data.records import iter_source_rows

    paths, names = dataset_data_files(dataset)
    if _is_text(dataset):
        documents = list(pretrain.iter_documents(paths if len(paths) > 1 else paths[0],
                                                 name=names[0] if len(paths) == 1 else None))
        return [{"text": d.text} for d in documents], [d.row for d in documents]
    rows = list(iter_source_rows(paths, None) if len(paths) > 1 else iter_source_rows(paths[0], names[0]))
    if not rows:
        raise DatasetError("no data rows found; add at least one row", file=" + ".join(names))
    return [r.data for r in rows], [r.row for r in rows]


# ---------------------------------------------------------------- analysis


def _analyse(analysis: DatasetAnalysis, progress: Phases) -> None:
    from tuning.data import lint as linting
    from tuning.data.preview import render_preview
    from tuning.data.readers import read_examples
    from tuning.data.stats import histogram_svg, token_stats

    dataset = analysis.dataset
    paths, names = dataset_data_files(dataset)
    target, name = (paths[0], names[0]) if len(paths) == 1 else (paths, None)
    progress.set_phase("loading the tokenizer")
    tokenizer = _tokenizer(analysis.base_model)
    # the template training would use, and the system prompt it writes into rows without one
    template = f"{use_chat_template(tokenizer, analysis.chat_template)}; {describe_system_prompt(tokenizer)}"
    progress.set_phase("reading rows")
    rows, file_rows = version_rows(dataset)
    progress.set_phase("checking rows (lint)", len(rows))
    report = linting.lint(list(zip(file_rows, rows)), tokenizer=tokenizer, max_length=analysis.max_length,
                          progress=progress)
    # Every row number is kept (to_dict lists the first 100 for the page): "drop these rows" needs all.
    by_number = dict(zip(file_rows, rows))
    findings = [finding.to_dict() | {"all_rows": list(finding.rows), "examples": _examples(finding, by_number)}
                for finding in sorted(report.findings, key=lambda f: f.severity != linting.BLOCKING)]  # grouped
    preview, stats, svg, message = [], {}, "", ""
    if dataset.schema == "preference":  # chosen and rejected side by side, as preference training renders them
        from tuning.data.preference import read_pairs
        from tuning.data.preview import render_pair_preview

        try:
            pairs = read_pairs(target, name=name)
        except DatasetError as exc:
            message = f"No preview until the blocking rows are dropped: {exc}"
        else:
            progress.set_phase("rendering the preview")
            preview = render_pair_preview(pairs, tokenizer, max_length=analysis.max_length, rows=PREVIEW_ROWS,
                                          file=name or "")
    elif "sft" not in dataset.tasks:
        message = (f"{dataset.schema} data is not rendered through a chat template; the preview and token "
                   f"statistics are for instruction and chat data.")
    else:
        blocking = {row for f in report.findings if f.severity == linting.BLOCKING for row in f.rows}
        try:
            examples = _examples_without(rows, file_rows, blocking) if blocking else read_examples(target, name=name)
        except DatasetError as exc:
            # Lint reads leniently; a row it passes that the strict reader still refuses leaves nothing to show.
            message = f"No preview or token statistics until this row is fixed or dropped: {exc}"
        else:
            if blocking:
                n = len(blocking)
                message = (f"The preview and token statistics leave out the {n} row{'s' * (n != 1)} that "
                           f"block{'s' * (n == 1)} training (listed below).")
            progress.set_phase("rendering the preview")
            preview = render_preview(examples, tokenizer, max_length=analysis.max_length,
                                     loss_on_prompt=analysis.loss_on_prompt, rows=PREVIEW_ROWS, file=name or "")
            progress.set_phase("counting tokens", len(examples))
            result = token_stats(examples, tokenizer, max_length=analysis.max_length,
                                 loss_on_prompt=analysis.loss_on_prompt, file=name or "", progress=progress)
            stats, svg = result.to_dict(), histogram_svg(result)
    dataset_analysis_save(analysis_id=analysis.pk, preview=preview, stats=stats, histogram_svg=svg,
                          findings=findings, notice=message, template_in_effect=template if preview else "")


EXAMPLES = 3  # rows a finding shows as text, so the user sees what dropping it removes
EXAMPLE_CHARS = 160


def _examples(finding, by_number: dict[int, dict]) -> list[dict]:
    """The first rows of a finding as text, with why each is listed where lint says."""
    from tuning.data.records import readable_value

    return [{"row": row, "why": finding.details.get(row, ""),
             "text": readable_value(by_number[row], EXAMPLE_CHARS) if row in by_number else ""}
            for row in finding.rows[:EXAMPLES]]


def _examples_without(rows: list[dict], file_rows: list[int], dropped: set[int]) -> list:
    """The version's rows less ``dropped`` (row numbers in the file) as Examples numbered as in the file:
    what training would read once the blocking rows are gone, so the histogram and the preview show
    while the user decides what to drop."""
    import dataclasses

    from tuning.data.readers import read_examples

    kept = [(number, row) for number, row in zip(file_rows, rows) if number not in dropped]
    if not kept:
        raise DatasetError("every row has a blocking problem; there is nothing left to preview")
    with tempfile.TemporaryDirectory(prefix="analysis-") as tmp:
        try:
            examples = read_examples(_write([row for _, row in kept], tmp, "kept.jsonl"))
        except DatasetError as exc:  # name the row as the user's file numbers it
            raise DatasetError(exc.reason, row=kept[exc.row - 1][0] if exc.row else None, field=exc.field) from exc
    return [dataclasses.replace(example, row=kept[example.row - 1][0]) for example in examples]


# ---------------------------------------------------------------- operations


def _write(rows: list[dict], directory: str, name: str) -> Path:
    from tuning.data.versioning import write_jsonl

    path = Path(directory) / name
    write_jsonl(rows, path)
    return path


def _mapped_rows(dataset: Dataset, schema: str, mapping: dict) -> list[dict]:
    from tuning.data import pretrain
    from tuning.data.records import iter_source_rows
    from tuning.data.schema import apply_mapping

    paths, names = dataset_data_files(dataset)
    target, name = (paths[0], names[0]) if len(paths) == 1 else (paths, None)
    if schema == "text":
        return [{"text": d.text} for d in pretrain.iter_documents(target, name=name, mapping=mapping or None)]
    return [apply_mapping(row.data, mapping) for row in iter_source_rows(target, name)]


def _embed_fn(progress: Phases):
    from tuning.data.embed import SentenceEncoder
    from tuning.models import prepare_bundled_encoder

    encoder = SentenceEncoder(prepare_bundled_encoder(Path(settings.MEDIA_ROOT) / ENCODER_DIR))

    def embed(texts: list[str]):
        progress.set_phase("embedding rows (all-MiniLM-L6-v2)", len(texts))
        return encoder.encode(texts, progress=progress)

    return embed


def _operate(run: DatasetOperation, progress: Phases) -> list[Dataset]:
    from tuning.data import diet, lint

    dataset, user, params = run.dataset, run.created_by, dict(run.parameters)
    with tempfile.TemporaryDirectory(prefix="dataset-op-") as tmp:
        if run.operation == "map_columns":
            progress.set_phase("applying the column mapping")
            rows = _mapped_rows(dataset, params["schema"], params["mapping"])
            # A mapping that does not fit even the first row is wrong as a whole: say so, make nothing. (A
            # few bad rows further on are kept and flagged, to be dropped after an analysis.)
            dataset_describe_file([_write(rows[:1], tmp, "first.jsonl")], names=[f"{dataset.name}.jsonl"],
                                  schema=params["schema"], allow_bad_rows=False)
            path = _write(rows, tmp, "mapped.jsonl")
            progress.set_phase("checking the mapped rows")
            return dataset_operation_store(operation_id=run.pk, versions=[dict(
                parents=[dataset], user=user, rows_path=path, operation="map_columns", parameters=params,
                report={"rows": len(rows)}, schema=params["schema"])])
        progress.set_phase("reading rows")
        rows, file_rows = version_rows(dataset)
        if run.operation == "drop_rows":
            kept = lint.drop_rows(rows, params["rows"], file_rows=file_rows)
            # "codes"/"counts": the findings cleaned in one step; "code": one finding (steps stored earlier)
            codes = params.get("codes") or [params.get("code", "")]
            report = {"rows_before": len(rows), "rows_after": len(kept), "dropped": len(rows) - len(kept),
                      "findings": params.get("counts") or {codes[0]: len(rows) - len(kept)}}
            path = _write(kept, tmp, "kept.jsonl")
            return dataset_operation_store(operation_id=run.pk, versions=[dict(
                parents=[dataset], user=user, rows_path=path, operation="drop_rows", parameters=params,
                report=report, schema=dataset.schema)])
        data, parents = rows, [dataset]
        if run.operation == "merge":
            parents = [dataset, *run.others.order_by("pk")]
            data = [rows] + [version_rows(other)[0] for other in parents[1:]]
        progress.set_phase(diet.DIET_OPERATIONS[run.operation].label.lower(), len(rows))
        needs = diet.DIET_OPERATIONS[run.operation].needs
        tokenizer = _tokenizer(run.base_model) if "tokenizer" in needs and run.base_model else None
        embed_fn = _embed_fn(progress) if "embed_fn" in needs else None
        output, report, lineages = diet.run_operation(
            run.operation, data, params, parents=tuple(p.sha256 for p in parents),
            schemas=[p.schema for p in parents], embed_fn=embed_fn, tokenizer=tokenizer, progress=progress)
        progress.set_phase("storing the new version")
        parts = (output[0], output[1]) if run.operation == "split" else (output,)
        versions = []
        for lineage, part in zip(lineages, parts):
            if not part:
                continue  # an empty side of a split is not a dataset
            suffix = getattr(lineage, "part", "")
            path = _write(part, tmp, f"{suffix or 'rows'}.jsonl")
            versions.append(dict(
                parents=parents, user=user, rows_path=path, operation=run.operation, parameters=params,
                report={**report, "lineage": lineage.to_dict()}, name_suffix=f"-{suffix}" if suffix else "",
                schema=dataset.schema))
        return dataset_operation_store(operation_id=run.pk, versions=versions)
