"""Counting what the new-job form shows for a base model, on a worker: the
model's shape (for the memory estimate) and, for each requested method,
settings and task, how many parameters a run trains. The method is prepared
on a weightless ("meta") copy of the model; the web process only reads the
stored numbers (``studio.catalog.services``)."""

from __future__ import annotations

import logging

from django.conf import settings

from studio.catalog.models import BaseModel
from studio.catalog.services import base_model_facts_save
from tuning.errors import TuningError

log = logging.getLogger(__name__)


def base_model_facts(base_model_id: int) -> int:
    """Count every pending request of the base model; how many were answered."""
    from tuning.methods.estimate import estimate_trainable_parameters, model_shape
    from tuning.models import MODEL_CODE_LOCK, load_model_config

    model = BaseModel.objects.filter(pk=base_model_id).first()
    pending = (model.facts.get("pending") or {}) if model else {}
    if not pending:
        return 0
    try:
        config = load_model_config(model.ref, trust_remote_code=settings.TRUST_REMOTE_CODE)
    except TuningError as exc:  # the form says why: a missing directory, an unreadable config
        base_model_facts_save(base_model_id=model.pk, shape=None,
                              counts={key: {"error": str(exc)} for key in pending})
        return len(pending)
    counts = {}
    for key, entry in pending.items():
        method, params, task = entry["request"]
        try:
            with MODEL_CODE_LOCK:  # the meta model goes through transformers' model code
                trainable, total = estimate_trainable_parameters(config, method, params, task=task)
            counts[key] = {"trainable": trainable, "total": total}
        except TuningError as exc:
            counts[key] = {"error": str(exc)}
        except Exception as exc:  # an estimate never takes the worker down; the form shows the reason
            log.warning("counting %s on %s failed", key, model.ref, exc_info=True)
            counts[key] = {"error": f"internal error ({type(exc).__name__}: {str(exc)[:200]})"}
    base_model_facts_save(base_model_id=model.pk, shape=model_shape(config), counts=counts)
    return len(counts)
