"""The OpenAPI paths of the work the pages start beside training: merge,
quantize and evaluate jobs (views_steps.py), and a dataset's mapping, diet
steps and analyses (views_dataset_work.py). Merged into openapi.py's document."""

from __future__ import annotations

from studio.api.openapi_parts import answer, id_param, list_of, op, ref
from tuning.data.diet import DIET_OPERATIONS
from tuning.merge import MERGE_METHODS
from tuning.merge_search import METRICS, SEARCH_METHODS
from tuning.quantize import QUANT_SCHEMES

STATUS = {"type": "string", "description": "The job's status, as a job's."}
NAME_TEAM = {"name": {"type": "string"}, "team": {"type": "string", "description": "Team id or slug."}}


def _body(required: list[str], properties: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": required, "additionalProperties": False, "properties": properties}}}}


MERGE = _body(["artifacts"], {
    "artifacts": {"type": "array", "items": {"type": "integer"}, "minItems": 1,
                  "description": "Artifacts of one base model (one adapter for fold)."},
    "method": {"enum": list(MERGE_METHODS), "default": next(iter(MERGE_METHODS))},
    "params": {"type": "object", "description": "The method's parameters, as on the merge page."},
    "weights": {"type": "array", "items": {"type": "number"}, "description": "One per artifact."},
    "dataset": {"type": "integer", "description": "Data some methods read (fisher estimates on it, atlas learns "
                                                 "its coefficients on it)."}, **NAME_TEAM})

QUANTIZE = _body(["artifact", "scheme"], {
    "artifact": {"type": "integer"}, "scheme": {"enum": list(QUANT_SCHEMES)},
    "scheme_params": {"type": "object", "description": "The scheme's own settings, e.g. ComPEFT's density and "
                                                       "alpha (`python -m tuning quantize-schemes --json`)."},
    "eval_dataset": {"type": "integer", "description": "Scored before and after, for the report."},
    "validation_dataset": {"type": "integer", "description": "ComPEFT's α search (scheme_params.alpha_grid): each "
                                                            "candidate α is scored by loss on it."},
    "prompts": {"type": "array", "items": {"type": "string"}, "maxItems": 8,
                "description": "Answered before and after, for the report."},
    "report": {"description": "false: no report. Or which parts it measures (sizes always; perplexity when "
                              "eval_dataset is given).",
               "oneOf": [{"type": "boolean", "enum": [False]}, {"type": "object", "additionalProperties": False,
                         "properties": {
                             "answers": {"type": "boolean", "default": True},
                             "agreement": {"type": "boolean", "default": True},
                             "speed": {"type": "boolean", "default": False},
                             "eval_rows": {"type": "integer", "minimum": 1, "default": 16},
                             "max_new_tokens": {"type": "integer", "minimum": 1, "default": 32}}}]},
    **NAME_TEAM})

EVALUATE = _body(["dataset"], {
    "artifact": {"type": "integer", "description": "The artifact to score (or base_model)."},
    "base_model": {"type": "integer", "description": "A base model to benchmark on its own (settings.harness "
                                                    "set), instead of an artifact."},
    "dataset": {"type": "integer"},
    "settings": {"type": "object", "description": "The evaluate page's settings (task, max_rows, …; harness, "
                                                           "question_column, choices_column, answer_column, "
                                                           "answer_regex, harness_tasks, num_fewshot for a "
                                                           "benchmark through lm-evaluation-harness)."},
    **NAME_TEAM})

MERGE_SEARCH = _body(["artifacts", "search", "dataset"], {
    "artifacts": {"type": "array", "items": {"type": "integer"}, "minItems": 2,
                  "description": "Two or more artifacts of one base model."},
    "method": {"enum": list(SEARCH_METHODS), "default": "task_arithmetic"},
    "search": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "number"},
                                                         "minItems": 2, "maxItems": 2},
               "description": "Each searched coefficient and its range [low, high]: weight.<i> (the i-th "
                              "artifact's weight), scaling, density (TIES, DARE)."},
    "params": {"type": "object", "description": "The method's settings that are not searched."},
    "dataset": {"type": "integer", "description": "Every candidate is scored on it."},
    "metric": {"enum": list(METRICS), "default": "eval_loss"},
    "evaluate": {"type": "object", "description": "The evaluate settings of every candidate (task, max_rows, "
                                                 "generate_rows, max_new_tokens, max_length)."},
    "budget": {"type": "integer", "minimum": 2, "default": 12, "description": "Candidates in all."},
    "population": {"type": "integer", "minimum": 2, "default": 4, "description": "Candidates per generation."},
    "seed": {"type": "integer", "minimum": 0, "default": 0}, **NAME_TEAM})
SEARCH_RESULT = {"type": "object", "properties": {
    "object": {"const": "merge_search"}, "job": {"type": "integer"}, "status": STATUS,
    "metric": {"type": "string"}, "best": {"type": ["integer", "null"], "description": "The best candidate's index."},
    "model": {"type": ["integer", "null"], "description": "The artifact the search kept (once it succeeded)."},
    "candidates": {"type": "array", "items": {"type": "object", "properties": {
        "index": {"type": "integer"}, "generation": {"type": "integer"}, "coefficients": {"type": "object"},
        "recipe": {"type": "object"}, "score": {"type": ["number", "null"]},
        "outcome": {"enum": ["", "scored", "failed"]}, "message": {"type": "string"},
        "merge_job": {"type": ["integer", "null"]}, "evaluate_job": {"type": ["integer", "null"]},
        "weights_deleted": {"type": "boolean"}}}}}}

MAPPING = _body(["schema", "mapping"], {
    "schema": {"type": "string", "description": "alpaca, chat, sharegpt, prompt_completion, text …"},
    "mapping": {"type": "object", "additionalProperties": {"type": "string"},
                "description": "Each field of the schema and the column of the data that holds it."}})

DIET = _body(["operation"], {
    "operation": {"enum": list(DIET_OPERATIONS)},
    "params": {"type": "object", "description": "; ".join(
        f"{name}: " + (", ".join(f"{p.name} ({p.kind}, default {p.default})" for p in operation.params) or "none")
        for name, operation in DIET_OPERATIONS.items())},
    "others": {"type": "array", "items": {"type": "integer"}, "description": "merge: the versions to append."},
    "base_model": {"type": "integer", "description": "length_filter in tokens: whose tokenizer counts."}})

ANALYSE = _body(["base_model"], {
    "base_model": {"type": "integer"}, "max_length": {"type": "integer", "minimum": 8, "default": 512},
    "loss_on_prompt": {"type": "boolean", "default": False}, "chat_template": {"type": "string", "default": "auto"}})

OPERATION = {"type": "object", "properties": {
    "object": {"const": "dataset.operation"}, "id": {"type": "integer"}, "dataset": {"type": "integer"},
    "operation": {"type": "string"}, "parameters": {"type": "object"},
    "job": {"type": "integer", "description": "Follow it at /fine_tuning/jobs/{job} and its events."},
    "status": STATUS, "error": {"type": ["string", "null"]},
    "results": {"type": "array", "items": {"type": "integer"}, "description": "The versions it made, once done."},
    "created_at": {"type": "integer"}}}
ANALYSIS = {"type": "object", "properties": {
    "object": {"const": "dataset.analysis"}, "id": {"type": "integer"}, "dataset": {"type": "integer"},
    "job": {"type": "integer"}, "status": STATUS, "error": {"type": ["string", "null"]},
    "stats": {"type": "object", "description": "Token statistics."},
    "findings": {"type": "array", "description": "Lint findings, each with its rows; blocking ones keep the "
                                                 "version out of training."},
    "preview": {"type": "array", "description": "The first rows through the chat template."}}}

JOB_STARTED = answer(ref("Job"), "The job, queued (follow it at /fine_tuning/jobs/{id})")
WRITE_ERRORS = ("400", "401", "403", "404")


def steps_paths() -> dict:
    dataset_id = id_param("dataset_id")
    return {
        "/merges": {"post": op("createMerge", "Merge artifacts, or fold an adapter into its base", JOB_STARTED,
                               ok_code="201", errors=WRITE_ERRORS, body=MERGE)},
        "/quantizations": {"post": op("createQuantization", "Quantize or export an artifact", JOB_STARTED,
                                      ok_code="201", errors=WRITE_ERRORS, body=QUANTIZE)},
        "/evaluations": {"post": op("createEvaluation", "Score an artifact on a dataset", JOB_STARTED,
                                    ok_code="201", errors=WRITE_ERRORS, body=EVALUATE)},
        "/merge-searches": {"post": op(
            "createMergeSearch", "Search a merge's coefficients against a score (each candidate a child job)",
            JOB_STARTED, ok_code="201", errors=WRITE_ERRORS, body=MERGE_SEARCH)},
        "/merge-searches/{job_id}": {"get": op(
            "retrieveMergeSearch", "A merge search's candidates, their scores and the best",
            answer(SEARCH_RESULT, "The search"), params=[id_param("job_id")])},
        "/datasets/{dataset_id}/mapping": {"post": op(
            "confirmMapping", "Confirm an unsure upload's schema and columns", answer(OPERATION, "Queued"),
            ok_code="202", params=[dataset_id], errors=WRITE_ERRORS, body=MAPPING,
            description="A worker writes the mapped rows as the next version, the one jobs can train on.")},
        "/datasets/{dataset_id}/operations": {
            "get": op("listDatasetOperations", "The version's diet steps and mapping, newest first",
                      answer(list_of("DatasetOperation"), "A page"), params=[dataset_id]),
            "post": op("createDatasetOperation", "Run a diet step (dedupe, filter, subsample, split, merge)",
                       answer(OPERATION, "Queued"), ok_code="202", params=[dataset_id], errors=WRITE_ERRORS,
                       body=DIET)},
        "/datasets/{dataset_id}/operations/{operation_id}": {"get": op(
            "retrieveDatasetOperation", "A diet step", answer(OPERATION, "The step"),
            params=[dataset_id, id_param("operation_id")])},
        "/datasets/{dataset_id}/analyses": {"post": op(
            "createDatasetAnalysis", "Analyse a version for a base model", answer(ANALYSIS, "Queued"),
            ok_code="202", params=[dataset_id], errors=WRITE_ERRORS, body=ANALYSE)},
        "/datasets/{dataset_id}/analyses/{analysis_id}": {"get": op(
            "retrieveDatasetAnalysis", "An analysis: statistics, findings, preview", answer(ANALYSIS, "It"),
            params=[dataset_id, id_param("analysis_id")])},
    }


SCHEMAS = {"DatasetOperation": OPERATION, "DatasetAnalysis": ANALYSIS}
