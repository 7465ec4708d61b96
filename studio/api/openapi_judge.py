"""The OpenAPI paths of judged comparisons and forgetting checks (views_judge.py). Merged into openapi.py's
document."""

from __future__ import annotations

from studio.api.openapi_parts import answer, id_param, op, ref

NAME_TEAM = {"name": {"type": "string"}, "team": {"type": "string", "description": "Team id or slug."}}
WRITE_ERRORS = ("400", "401", "403", "404")
JOB_STARTED = answer(ref("Job"), "The job, queued (follow it at /fine_tuning/jobs/{id})")


def _body(required: list[str], properties: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": required, "additionalProperties": False, "properties": properties}}}}


JUDGE = _body(["model_b", "judge"], {
    "model_b": {"type": "integer", "description": "The artifact judged (the tune)."},
    "model_a": {"type": ["integer", "null"], "description": "The artifact it is compared with; none: model B's "
                                                              "base model."},
    "prompts": {"oneOf": [{"const": "golden"}, {"type": "array", "items": {"type": "string"}, "maxItems": 200}],
                "default": "golden", "description": "golden: the golden prompts of model B's training run."},
    "dataset": {"type": "integer", "description": "Or the first rows of this dataset as the prompts."},
    "max_rows": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
    "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": 2048, "default": 128},
    "judge": {"type": "object", "additionalProperties": False, "description": (
        "An OpenAI-compatible endpoint ({url, model} and its key: api_key, kept as a team secret, or secret, a "
        "saved one's id; the URL must be a public address unless an admin allows it in JUDGE_ALLOWED_HOSTS), "
        "or a model of the studio ({artifact})."), "properties": {
        "url": {"type": "string"}, "model": {"type": "string"}, "api_key": {"type": "string"},
        "secret": {"type": "integer"}, "artifact": {"type": "integer"},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1024, "default": 16}}},
    **NAME_TEAM})

FORGETTING = _body(["artifact"], {
    "artifact": {"type": "integer"},
    "threshold_pct": {"type": "number", "minimum": 0, "default": 10,
                      "description": "Warn when perplexity on general text rises (or a harness score drops) by "
                                     "more than this percentage."},
    "harness": {"type": "object", "additionalProperties": False, "description": (
        "Harness scores of the base and the tune too: tasks (lm-evaluation-harness task names separated by "
        "commas; the worker needs a network), or dataset (a dataset version as a multiple-choice task) with "
        "question_column, choices_column, answer_column."),
        "properties": {"tasks": {"type": "string"}, "dataset": {"type": "integer"},
                       "question_column": {"type": "string"}, "choices_column": {"type": "string"},
                       "answer_column": {"type": "string"}}},
    **NAME_TEAM})

RESULT = {"allOf": [ref("Job"), {"type": "object", "properties": {"result": {"type": ["object", "null"]}}}]}


def judge_paths() -> dict:
    job_id = id_param("job_id")
    return {
        "/judged-comparisons": {"post": op(
            "createJudgedComparison", "Judge two models' answers pairwise, positions swapped", JOB_STARTED,
            ok_code="201", errors=WRITE_ERRORS, body=JUDGE,
            description="Each pair is judged twice with the answers' positions swapped; a disagreement is a tie. "
                        "The result has wins, ties and losses of model B with 95% Wilson intervals.")},
        "/judged-comparisons/{job_id}": {"get": op(
            "retrieveJudgedComparison", "A judged comparison: its job, summary and every judged pair",
            answer(RESULT, "The job; result is null until it succeeds"), params=[job_id])},
        "/forgetting-checks": {"post": op(
            "createForgettingCheck", "Perplexity on general held-out text, base vs tuned", JOB_STARTED,
            ok_code="201", errors=WRITE_ERRORS, body=FORGETTING)},
        "/forgetting-checks/{job_id}": {"get": op(
            "retrieveForgettingCheck", "A forgetting check: its job and result (regressed: the warning)",
            answer(RESULT, "The job; result is null until it succeeds"), params=[job_id])},
    }
