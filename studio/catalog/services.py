"""Writes of the base-model catalogue: registering a model, and the facts
the new-job form shows (its shape and trainable-parameter counts), which a
worker computes on request so that no web request builds a model."""

from __future__ import annotations

import re
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction

from studio.accounts.secrets import secret_for_job
from studio.catalog.models import BaseModel
from studio.celery import app as celery_app
from studio.jobs.models import Job
from studio.jobs.state import job_create
from tuning.errors import ConfigError
from tuning.methods.estimate import estimate_key

FACTS_TASK = "worker.tasks.base_model_facts"  # sent by name: the web side never imports worker/
FIRST_SHOWN = "lora"  # the method the new-job form opens with
RESEND_AFTER_S = 60  # a request this old was lost (a worker restarted meanwhile): ask again


def base_model_register(*, name: str, source: str, ref: str, upstream_id: str = "") -> BaseModel:
    """Add (or update) a base model and have a worker count what the new-job
    form first shows (LoRA's defaults; other methods are counted when picked)."""
    with transaction.atomic():
        model, _ = BaseModel.objects.update_or_create(ref=ref, defaults={"name": name, "source": source,
                                                                         "upstream_id": upstream_id, "facts": {}})
        base_model_facts_request(base_model=model, requests=[(FIRST_SHOWN, {}, task) for task in ("sft", "classify")])
    return model


def base_model_facts_request(*, base_model: BaseModel, requests: list[tuple[str, dict, str]]) -> None:
    """Ask a worker (the interactive queue, which answers between playground
    chats) to count each (method, params, task) not counted or asked for yet."""
    requests = {estimate_key(method, params, task): [method, params, task] for method, params, task in requests}
    # The form asks again every second while it waits: answer those from the row it read, without a lock.
    if not _to_ask(base_model.facts, requests):
        return
    with transaction.atomic():
        model = BaseModel.objects.select_for_update().get(pk=base_model.pk)
        facts = {"counts": {}, "pending": {}, **model.facts}
        asked = _to_ask(facts, requests)
        if not asked:
            return
        facts["pending"].update(asked)
        BaseModel.objects.filter(pk=model.pk).update(facts=facts)
        transaction.on_commit(lambda: _send(model.pk))
    base_model.facts = facts


def _to_ask(facts: dict, requests: dict[str, list]) -> dict[str, dict]:
    """The requests neither counted nor asked for recently, as pending entries."""
    now, counted, pending = time.time(), facts.get("counts", {}), facts.get("pending", {})
    return {key: {"request": request, "at": now} for key, request in requests.items()
            if key not in counted and (key not in pending or now - pending[key]["at"] > RESEND_AFTER_S)}


def _send(base_model_id: int) -> None:
    celery_app.send_task(FACTS_TASK, args=[base_model_id], queue=settings.PLAYGROUND_QUEUE)


def base_model_facts_save(*, base_model_id: int, shape: dict | None, counts: dict[str, dict]) -> None:
    """What a worker counted: the shape (None when the config could not be
    read) and a result or an error per key; those keys are no longer pending."""
    with transaction.atomic():
        model = BaseModel.objects.select_for_update().get(pk=base_model_id)
        facts = {"counts": {}, "pending": {}, **model.facts}
        if shape is not None:
            facts["shape"] = shape
        facts["counts"].update(counts)
        facts["pending"] = {key: value for key, value in facts["pending"].items() if key not in counts}
        BaseModel.objects.filter(pk=base_model_id).update(facts=facts)


# --- adding models: from the hub (downloaded by a job) or from a folder on the server -----------------
MODEL_ADD_KIND = "model_add"
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
REVISION = re.compile(r"^[\w][\w./-]{0,99}$")


def hub_secret_for(*, user, team, token: str, secret_id: int | None, repo_id: str) -> int | None:
    """The team secret a hub job names: a pasted ``token`` is stored as a new one, else the saved one picked."""
    return secret_for_job(user=user, team=team, pasted=token, secret_id=secret_id, name=f"Hub token ({repo_id})",
                          field="secret")


def model_download_request(*, user, team, repo_id: str, revision: str = "", token: str = "",
                           secret_id: int | None = None, allow_pickle: bool = False) -> Job:
    """Queue a job that checks the hub repo and downloads it (studio.jobs.kinds "model_add").
    A pasted ``token`` is kept as a team secret; the job names it, never holds it.
    Raises ConfigError naming the field."""
    repo_id, revision = repo_id.strip(), (revision or "main").strip()
    if not REPO_ID.match(repo_id) or ".." in repo_id:
        raise ConfigError({"repo_id": f"'{repo_id[:100]}' is not a hub repo id; write it as owner/name, "
                                      "e.g. Qwen/Qwen2.5-0.5B-Instruct"})
    if not REVISION.match(revision) or ".." in revision:
        raise ConfigError({"revision": "a branch, tag or commit sha (letters, digits, . _ - /)"})
    if allow_pickle and not user.is_staff:
        raise ConfigError({"allow_pickle": "only a staff user can allow pickled weights"})
    unfinished = Job.objects.filter(team=team, kind=MODEL_ADD_KIND, config__repo_id=repo_id).exclude(
        status__in=Job.FINISHED)
    if unfinished.exists():
        raise ConfigError({"repo_id": f"{repo_id} is already being added (job #{unfinished.first().pk})"})
    with transaction.atomic():
        config = {"source": "hub", "repo_id": repo_id, "revision": revision, "allow_pickle": allow_pickle,
                  "secret_id": hub_secret_for(user=user, team=team, token=token, secret_id=secret_id, repo_id=repo_id)}
        return job_create(kind=MODEL_ADD_KIND, team=team, owner=user, config=config, name=f"Add {repo_id}")


def folder_refusal(path: str) -> str:
    """Why ``path`` may not be added as a model folder ("" when it may): it must lie under an
    allowed root (MODEL_FOLDER_ROOTS), and no file in it may be a link that leads out of that root."""
    roots = [Path(root).resolve() for root in settings.MODEL_FOLDER_ROOTS]
    if not roots:
        return "adding folders is turned off; an admin lists the allowed folders in MODEL_FOLDER_ROOTS"
    if not Path(path).is_absolute():
        return "give the folder's absolute path on the server"
    try:
        folder = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        return f"{path} does not exist on the server"
    root = next((root for root in roots if folder.is_relative_to(root)), None)
    if root is None:
        return f"{path} is outside the folders models may come from ({', '.join(map(str, roots))})"
    if not folder.is_dir() or not (folder / "config.json").is_file():
        return f"{path} is not a model folder (no config.json in it)"
    for entry in folder.rglob("*"):
        if entry.is_symlink() and not entry.resolve().is_relative_to(root):
            return f"{entry.relative_to(folder)} is a link to outside {root}; copy the file in instead"
    return ""


def model_folder_request(*, user, team, path: str) -> Job:
    """Queue a job that checks a server folder and registers it (the architecture check reads
    transformers' tables, which the web process does not load)."""
    if refusal := folder_refusal(path):
        raise ConfigError({"path": refusal})
    folder = str(Path(path).resolve())
    if BaseModel.objects.filter(ref=folder).exists():
        raise ConfigError({"path": f"{folder} is already a base model"})
    return job_create(kind=MODEL_ADD_KIND, team=team, owner=user, config={"source": "folder", "path": folder},
                      name=f"Add {Path(folder).name}")


def base_model_add(*, job, name: str, source: str, ref: str, info: dict, upstream_id: str = "", revision: str = "",
                   gated: bool = False) -> BaseModel:
    """Register what a model_add job checked (the worker calls this last: nothing is registered before)."""
    with transaction.atomic():
        model = BaseModel.objects.create(name=name[:200], source=source, ref=ref, upstream_id=upstream_id,
                                         revision=revision, info=info, gated=gated, team_id=job.team_id,
                                         added_by_id=job.owner_id)
        base_model_facts_request(base_model=model, requests=[(FIRST_SHOWN, {}, task) for task in ("sft", "classify")])
    return model
