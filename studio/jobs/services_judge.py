"""Judged comparisons and forgetting checks: jobs that compare a tune with its base or another model.

A judged comparison's judge is a model of the studio or an OpenAI-compatible endpoint; an endpoint's URL
passes the same outbound guard as a webhook's (studio.notifications.outbound, allow-list
``JUDGE_ALLOWED_HOSTS``) before the job is stored, and again on the worker before each connection. Its key
is a team secret: a pasted key is stored as one, and the job names it, never holds it.

What the studio adds to a run's settings (which artifacts, the secret) is kept in the job's config under
``STUDIO_KEY``; the worker passes the rest to tuning.judge / tuning.forgetting.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction

from studio.accounts.secrets import secret_for_job
from studio.artifacts.models import Artifact
from studio.jobs.models import Job
from studio.jobs.services_steps import PENDING_INPUT, _queue
from studio.notifications import outbound
from tuning.errors import ConfigError

STUDIO_KEY = "studio"  # the job config's part that the studio reads, not the run
JUDGE_ALLOWED = "JUDGE_ALLOWED_HOSTS"
CLASSIFIER_TASKS = ("classify", "reward")  # a score head, no next-token perplexity and no answers


def _task_of(artifact: Artifact) -> str:
    return (artifact.job.config or {}).get("task", "sft")


def golden_prompts_of(artifact: Artifact) -> list[str]:
    """The golden prompts of the training run the artifact comes from (through folds and quantizations)."""
    from studio.artifacts.selectors import artifact_lineage

    for step in artifact_lineage(artifact):
        prompts = (step.artifact.job.config or {}).get("golden_prompts") or []
        if prompts:
            return list(prompts)
    return []


def judge_url_check(url: str) -> None:
    """Refuse, before anything is stored or connected, a judge URL that is not http(s) with a host or that
    names a non-public address outside the admin's allow-list. ConfigError on ``judge_url``."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError({"judge_url": "must start with http:// or https:// and name a host, "
                                        "e.g. https://api.openai.com/v1"})
    try:
        outbound.check_literal_host(parts.hostname, allowed=JUDGE_ALLOWED)
    except outbound.AddressRefused as exc:
        raise ConfigError({"judge_url": f"refused: {exc}; a judge must be on a public address (an admin can "
                                        f"allow intranet judges with {JUDGE_ALLOWED})"}) from None


def _side(artifact: Artifact | None, base_model, which: str) -> dict:
    if artifact is None:
        return {f"model_{which}_path": "", f"model_{which}_base": base_model.ref,
                f"label_{which}": f"{base_model.name} (base)"[:100]}
    if _task_of(artifact) in CLASSIFIER_TASKS:
        raise ConfigError({f"model_{which}": f"{artifact.name} is a classifier: it scores, it writes no answers"})
    base = artifact.base_model.ref if artifact.base_model else ""
    if artifact.is_adapter and not base:
        raise ConfigError({f"model_{which}": f"{artifact.name} is an adapter whose base model is unknown"})
    return {f"model_{which}_path": artifact.path, f"model_{which}_base": base, f"label_{which}": artifact.name[:100]}


def job_create_judge(*, user, team, model_a: Artifact | None, model_b: Artifact, prompts: list[str],
                     dataset=None, judge_artifact: Artifact | None = None, judge_url: str = "",
                     judge_model: str = "", api_key: str = "", secret_id: int | None = None,
                     settings_values: dict | None = None, name: str = "") -> Job:
    """Compare ``model_b`` with ``model_a`` (None: ``model_b``'s base model) on ``prompts`` or the first
    rows of ``dataset``, judged by ``judge_artifact`` or the endpoint at ``judge_url``. Every artifact and
    the dataset are the caller's team's (the views check). Raises ConfigError naming the field."""
    from tuning.judge import JudgeConfig

    base_model = model_b.base_model
    if model_a is None and base_model is None:
        raise ConfigError({"model_a": f"{model_b.name} has no known base model to compare with; pick model A"})
    if model_a is not None and model_a.pk == model_b.pk:
        raise ConfigError({"model_a": "pick two different models"})
    if judge_url:
        judge_url_check(judge_url)
    values = {**(settings_values or {}), **_side(model_a, base_model, "a"), **_side(model_b, base_model, "b"),
              "prompts": prompts, "judge_url": judge_url.strip(), "judge_model": judge_model.strip(),
              "trust_remote_code": settings.TRUST_REMOTE_CODE}
    if dataset is not None:
        values["dataset_path"] = dataset.file.path
    if judge_artifact is not None:
        values.update(judge_path=judge_artifact.path,
                      judge_base=judge_artifact.base_model.ref if judge_artifact.base_model else "")
    config = JudgeConfig.from_dict(values)
    with transaction.atomic():
        secret = secret_for_job(user=user, team=team, pasted=api_key, secret_id=secret_id, field="judge_secret",
                                name=f"Judge key ({urlsplit(judge_url).hostname})") if judge_url else None
        job = Job.objects.create(team=team, owner=user, kind="judge", base_model=base_model, dataset=dataset,
                                 config={}, device_pool=settings.DEFAULT_DEVICE_POOL)
        inputs = [a for a in (model_a, model_b, judge_artifact) if a is not None]
        job = _queue(job, config=config, name=name or f"Judged: {config.label_b} vs {config.label_a}",
                     input_artifacts=inputs, depends_on=None)
        job.config = {**job.config, STUDIO_KEY: {
            "artifact_a": model_a.pk if model_a else None, "artifact_b": model_b.pk,
            "judge_artifact": judge_artifact.pk if judge_artifact else None, "secret_id": secret}}
        job.save(update_fields=["config"])
    job.refresh_from_db()
    return job


HARNESS_COLUMNS = ("question_column", "choices_column", "answer_column")  # a multiple-choice task's mapping


def forgetting_harness(*, harness_tasks: str = "", dataset=None, columns: dict | None = None) -> dict:
    """The forgetting check's harness settings (tuning.forgetting: an evaluate run's): named harness tasks,
    or ``dataset`` (a dataset version of the team) as a multiple-choice task with the user's ``columns``
    (question_column, choices_column, answer_column); {} for neither."""
    from pathlib import Path

    if harness_tasks.strip() and dataset is not None:
        raise ConfigError({"harness_tasks": "pick named harness tasks or a dataset version, not both"})
    if harness_tasks.strip():
        return {"harness": "named_tasks", "harness_tasks": harness_tasks.strip()}
    if dataset is None:
        return {}
    return {"harness": "multiple_choice", "dataset_path": dataset.file.path,
            "dataset_name": Path(dataset.file.name).name,
            **{k: v for k, v in (columns or {}).items() if k in HARNESS_COLUMNS and v}}


def forgetting_config(*, artifact_path: str, base_model, threshold_pct: float | None, harness: dict | None = None):
    from tuning.forgetting import ForgettingConfig

    values = {"artifact_path": artifact_path, "base_model": base_model.ref,
              "trust_remote_code": settings.TRUST_REMOTE_CODE}
    if threshold_pct is not None:
        values["threshold_pct"] = threshold_pct
    if harness:
        values["harness"] = harness
    config = ForgettingConfig.from_dict(values)
    if config.harness.get("harness") in ("multiple_choice", "generate_until"):
        from tuning.forgetting import harness_config
        from tuning.harness_tasks import check_harness_settings

        try:  # the column mapping against the file now, not after a wait in the queue
            check_harness_settings(harness_config(config, config.harness))
        except ConfigError as exc:
            raise ConfigError({f"harness.{key}": message for key, message in exc.errors.items()}) from None
    return config


def job_create_forgetting(*, user, team, artifact: Artifact | None = None, threshold_pct: float | None = None,
                          depends_on: Job | None = None, harness: dict | None = None, name: str = "") -> Job:
    """Measure ``artifact`` (or, with ``depends_on``, what that training job will make) against its base
    model on the studio's general held-out text; warn beyond ``threshold_pct`` percent more perplexity.
    ``harness`` (forgetting_harness) adds harness tasks scored on both, warning on a drop beyond it too."""
    base_model = depends_on.base_model if depends_on else artifact.base_model
    field = "forgetting_threshold_pct" if depends_on else "artifact"
    if base_model is None:
        raise ConfigError({field: "the forgetting check compares with the base model, and this one has none"})
    task = (depends_on.config if depends_on else artifact.job.config or {}).get("task", "sft")
    if task in CLASSIFIER_TASKS:
        raise ConfigError({field: "a classifier has no perplexity on text to compare; the forgetting check "
                                  "is for language models"})
    with transaction.atomic():
        job = Job.objects.create(team=team, owner=user, kind="forgetting", base_model=base_model, config={},
                                 device_pool=settings.DEFAULT_DEVICE_POOL)
        path = PENDING_INPUT.format(job_id=depends_on.pk) if depends_on else artifact.path
        config = forgetting_config(artifact_path=path, base_model=base_model, threshold_pct=threshold_pct,
                                   harness=harness)
        what = f"job #{depends_on.pk}" if depends_on else artifact.name
        job = _queue(job, config=config, name=name or f"Forgetting check: {what}",
                     input_artifacts=[artifact] if artifact else [], depends_on=depends_on)
    job.refresh_from_db()
    return job


def judge_config_for_run(config: dict) -> tuple[dict, dict]:
    """(the run's settings, the studio's part) of a judge or forgetting job's stored config."""
    return {k: v for k, v in config.items() if k != STUDIO_KEY}, config.get(STUDIO_KEY) or {}

