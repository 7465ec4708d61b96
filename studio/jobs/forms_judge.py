"""The judged comparison's fields, read the same way for the page (studio/jobs/views_judge.py) and the API
(studio/api/views_judge.py): which artifacts, which prompts, which judge, and what is wrong by field."""

from __future__ import annotations

from studio.jobs.services_judge import golden_prompts_of

PROMPT_SOURCES = (("golden", "The golden prompts of model B's training run"), ("typed", "Prompts I type"),
                  ("dataset", "The first rows of a dataset"))


def _number(data, name: str, errors: dict, *, default: int, low: int, high: int) -> int:
    raw = str(data.get(name, "") or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        errors[name] = f"must be a whole number from {low} to {high}"
        return default
    return int(raw)


def judge_request(*, data, artifacts, datasets, prompts_list=None) -> tuple[dict, dict]:
    """The service's arguments from a form's (or the API's) fields, and what is wrong with them by field.
    ``prompts_list``: the API's list of prompts (the form's are lines of one text)."""
    errors: dict[str, str] = {}
    by_id = {str(a.pk): a for a in artifacts}
    model_b = by_id.get(str(data.get("model_b", "")))
    if model_b is None:
        errors["model_b"] = "pick model B, the tuned model to judge"
    model_a = by_id.get(str(data.get("model_a", "")))
    if str(data.get("model_a", "") or "") not in ("", "base") and model_a is None:
        errors["model_a"] = "pick model A among the team's artifacts, or its base model"
    source = data.get("prompts_from") or "golden"
    prompts, dataset = [], None
    if source == "typed":
        prompts = prompts_list if prompts_list is not None else [
            line.strip() for line in str(data.get("prompts", "")).splitlines() if line.strip()]
        if not prompts:
            errors["prompts"] = "type at least one prompt, one per line"
    elif source == "dataset":
        dataset = datasets.filter(pk=data["dataset"]).first() if str(data.get("dataset", "")).isdigit() else None
        if dataset is None:
            errors["dataset"] = "pick a dataset of the team"
    elif source == "golden":
        prompts = (golden_prompts_of(model_b) if model_b else []) or (golden_prompts_of(model_a) if model_a else [])
        if model_b and not prompts:
            errors["prompts_from"] = ("neither model's training run has golden prompts; type prompts or pick a "
                                      "dataset")
    else:
        errors["prompts_from"] = f"must be one of: {', '.join(name for name, _ in PROMPT_SOURCES)}"
    judge_artifact = None
    if data.get("judge_kind") == "artifact":
        judge_artifact = by_id.get(str(data.get("judge_artifact", "")))
        if judge_artifact is None:
            errors["judge_artifact"] = "pick the team's model that judges"
    elif not str(data.get("judge_url", "")).strip():
        errors["judge_url"] = "give the judge endpoint's URL (OpenAI-compatible, e.g. https://api.openai.com/v1)"
    settings_values = {"max_rows": _number(data, "max_rows", errors, default=20, low=1, high=200),
                       "max_new_tokens": _number(data, "max_new_tokens", errors, default=128, low=1, high=2048),
                       "judge_max_tokens": _number(data, "judge_max_tokens", errors, default=16, low=1, high=1024)}
    secret = str(data.get("judge_secret", "") or "")
    if secret and not secret.isdigit():
        errors["judge_secret"] = "must be the id of a saved secret"
    arguments = {"model_a": model_a, "model_b": model_b, "prompts": prompts, "dataset": dataset,
                 "judge_artifact": judge_artifact,
                 "judge_url": "" if judge_artifact else str(data.get("judge_url", "")).strip(),
                 "judge_model": str(data.get("judge_model", "")).strip(),
                 "api_key": str(data.get("judge_api_key", "")),
                 "secret_id": int(secret) if secret.isdigit() else None, "settings_values": settings_values,
                 "name": str(data.get("name", ""))[:200]}
    return arguments, errors
