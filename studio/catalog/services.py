"""Writes of the base-model catalogue: registering a model, and the facts
the new-job form shows (its shape and trainable-parameter counts), which a
worker computes on request so that no web request builds a model."""

from __future__ import annotations

import time

from django.conf import settings
from django.db import transaction

from studio.catalog.models import BaseModel
from studio.celery import app as celery_app
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
