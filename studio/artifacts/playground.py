"""Playground requests: chat with one artifact, or two side by side.

The web process only checks the request and sends it to a worker (queue
PLAYGROUND_QUEUE); the worker streams the reply in pieces straight to the
asking WebSocket's channel. Nothing here imports torch.
"""

from __future__ import annotations

import uuid

from django.conf import settings

from studio.artifacts.selectors import artifact_list_for_user
from tuning.errors import ConfigError

GENERATE_TASK = "worker.tasks.playground_generate"  # sent by name: the web side never imports worker/
LIMITS = {"temperature": (0.0, 2.0), "top_p": (0.01, 1.0), "max_new_tokens": (1, 1024)}
MAX_PROMPT_CHARS = 8000


def _number(request: dict, key: str, default, errors: dict):
    low, high = LIMITS[key]
    kind = int if key == "max_new_tokens" else float
    try:
        value = kind(request.get(key, default))
    except (TypeError, ValueError):
        errors[key] = f"must be a number from {low} to {high}"
        return default
    if not low <= value <= high:
        errors[key] = f"must be from {low} to {high}"
    return value


def playground_request(*, user, request: dict, reply_channel: str) -> dict:
    """Check a chat request from the browser and send one generation per
    chosen artifact to the playground worker. Returns {"request_id", "sides"};
    raises ConfigError naming each bad field."""
    errors: dict[str, str] = {}
    ids = request.get("artifacts") or []
    if not isinstance(ids, list) or not 1 <= len(ids) <= 2:
        errors["artifacts"] = "choose one artifact, or two to compare"
        ids = []
    visible = {a.pk: a for a in artifact_list_for_user(user=user).filter(pk__in=[i for i in ids if str(i).isdigit()])
               .select_related("base_model")}
    chosen = [visible.get(int(i)) if str(i).isdigit() else None for i in ids]
    if ids and None in chosen:
        errors["artifacts"] = "no such artifact in your teams"
    prompt = str(request.get("prompt", "")).strip()
    if not prompt:
        errors["prompt"] = "type a message"
    elif len(prompt) > MAX_PROMPT_CHARS:
        errors["prompt"] = f"is {len(prompt)} characters; keep it under {MAX_PROMPT_CHARS}"
    system_prompt = str(request.get("system_prompt", "")).strip()[:4000]
    options = {key: _number(request, key, default, errors)
               for key, default in (("temperature", 0.7), ("top_p", 0.95), ("max_new_tokens", 128))}
    if errors:
        raise ConfigError(errors)
    from studio.celery import app

    request_id = uuid.uuid4().hex[:12]
    for side, artifact in zip("ab", chosen):
        # expires: a request still queued after two minutes has lost its asker.
        app.send_task(GENERATE_TASK, queue=settings.PLAYGROUND_QUEUE, expires=120, args=[reply_channel, {
            "request_id": request_id, "side": side, "artifact_id": artifact.pk, "path": artifact.path,
            "base_model": artifact.base_model.ref if artifact.is_adapter and artifact.base_model else "",
            "prompt": prompt, "system_prompt": system_prompt, **options}])
    return {"request_id": request_id, "sides": [{"side": s, "artifact": a.pk, "name": a.name}
                                                  for s, a in zip("ab", chosen)]}
