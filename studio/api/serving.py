"""OpenAI-compatible serving, the web side: which models a token may use,
and checking a /v1/chat/completions or /v1/completions body into the
request the playground's worker runs (worker/serving.py). Nothing here
imports torch; the views (views_openai.py) send the request and relay the reply.

Model ids are ``artifact-<id>`` and ``base-<id>``, as /v1/models lists them.
Another team's model answers exactly like one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q
from django.http import JsonResponse

from studio.api.errors import ApiError
from studio.artifacts.models import Artifact
from studio.artifacts.playground import LIMITS, MAX_PROMPT_CHARS
from studio.catalog.models import BaseModel
from studio.catalog.selectors import base_model_list
from tuning.models import BUNDLED_ENCODER_ID

SERVE_TASK = "worker.tasks.serve_completion"  # sent by name: the web side never imports worker/
ROLES = ("system", "user", "assistant", "developer")  # "developer": OpenAI's newer name for system
MAX_STOPS = 4  # as OpenAI allows
DEFAULT_MAX_TOKENS = 256


class OpenAIError(Exception):
    """An error in OpenAI's shape: {"error": {"message", "type", "param", "code"}},
    which the official clients turn into their exception classes."""

    TYPES = {403: "permission_error", 429: "rate_limit_error"}  # else by the status: invalid request or server

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @classmethod
    def from_api_error(cls, error: ApiError) -> OpenAIError:
        code = {401: "invalid_api_key"}.get(error.status)
        return cls(error.status, error.message, param=error.field, code=code)

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        if self.status == 401:
            response["WWW-Authenticate"] = 'Bearer realm="api"'
        return response


@dataclass(frozen=True)
class ServedModel:
    id: str
    created: int  # unix time
    owned_by: str  # the team's slug, or "studio" for a model every team shares
    path: str  # what load_artifact reads
    base_model: str  # the base an adapter applies to, else ""


def _artifacts(team_ids):
    # Classifiers (text + label) have no language-model head to generate with. (has_key first: a row without
    # "task" would otherwise compare NULL and drop out as well.)
    classifiers = Q(metadata__has_key="task") & Q(metadata__task="classify")
    return (Artifact.objects.filter(team_id__in=team_ids).exclude(classifiers)
            .select_related("team", "base_model"))


def _artifact_served(artifact: Artifact) -> ServedModel:
    base = artifact.base_model.ref if artifact.is_adapter and artifact.base_model else ""
    return ServedModel(f"artifact-{artifact.pk}", int(artifact.created_at.timestamp()), artifact.team.slug,
                       artifact.path, base)


def _base_models(team_ids):
    # The bundled sentence encoder is a base for classifiers only: it has no head to generate with.
    return base_model_list(team_ids=team_ids).exclude(upstream_id=BUNDLED_ENCODER_ID).select_related("team")


def _base_served(model: BaseModel) -> ServedModel:
    return ServedModel(f"base-{model.pk}", int(model.created_at.timestamp()),
                       model.team.slug if model.team_id else "studio", model.ref, "")


def served_models(*, team_ids: list[int]) -> list[ServedModel]:
    """Every model the teams may chat with: their artifacts, newest first, then the base models."""
    return ([_artifact_served(a) for a in _artifacts(team_ids).order_by("-pk")[:500]]
            + [_base_served(m) for m in _base_models(team_ids)])


def served_model(*, team_ids: list[int], model_id) -> ServedModel:
    """The model called ``model_id``, or a 404 model_not_found (also for another team's)."""
    kind, _, number = str(model_id).partition("-")
    found = None
    if number.isdigit() and kind == "artifact":
        found = _artifacts(team_ids).filter(pk=int(number)).first()
        found = found and _artifact_served(found)
    elif number.isdigit() and kind == "base":
        found = _base_models(team_ids).filter(pk=int(number)).first()
        found = found and _base_served(found)
    if found is None:
        raise OpenAIError(404, f"The model {str(model_id)[:80]!r} does not exist or you do not have access to it; "
                               f"GET /v1/models lists the ids you can use", param="model", code="model_not_found")
    return found


def _number(body: dict, key: str, limit: str, default):
    low, high = LIMITS[limit]
    value = body.get(key)
    if value is None:
        return default
    kind = int if limit == "max_new_tokens" else float
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise OpenAIError(400, f"{key} must be a {'whole ' if kind is int else ''}number from {low} to {high}",
                          param=key)
    if not low <= value <= high:
        raise OpenAIError(400, f"{key} must be from {low} to {high}, not {value}", param=key)
    return kind(value)


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise OpenAIError(400, f"stop must be a string or a list of at most {MAX_STOPS} non-empty strings",
                          param="stop")
    return stops


def _options(body: dict) -> dict:
    """The sampling options both endpoints share, checked."""
    if body.get("n") not in (None, 1):
        raise OpenAIError(400, "n must be 1: the studio generates one choice per request", param="n")
    if not isinstance(body.get("stream", False), bool):
        raise OpenAIError(400, "stream must be true or false", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise OpenAIError(400, "stream_options must be an object", param="stream_options")
    max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return {"max_tokens": _number(body, max_key, "max_new_tokens", DEFAULT_MAX_TOKENS),
            "temperature": _number(body, "temperature", "temperature", 1.0),
            "top_p": _number(body, "top_p", "top_p", 1.0), "stop": _stops(body),
            "stream": body.get("stream", False), "include_usage": bool(stream_options.get("include_usage"))}


def _content(turn, index: int) -> str:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text"} parts."""
    content = turn.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise OpenAIError(400, f"messages[{index}].content must be text (a string, or a list of text parts); "
                               f"the studio's models read text only", param=f"messages[{index}].content")
    return content


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "messages must be a non-empty list of {role, content}", param="messages")
    turns = []
    for index, turn in enumerate(messages):
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ROLES:
            raise OpenAIError(400, f"messages[{index}].role must be one of {', '.join(ROLES)}, not {role!r:.40}",
                              param=f"messages[{index}].role")
        turns.append({"role": "system" if role == "developer" else role, "content": _content(turn, index)})
    if sum(len(t["content"]) for t in turns) > MAX_PROMPT_CHARS:
        raise OpenAIError(400, f"the messages hold more than {MAX_PROMPT_CHARS} characters; send a shorter "
                               f"conversation", param="messages")
    return turns


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise OpenAIError(400, "prompt must be one non-empty string (token lists and batches of prompts are not "
                               "served)", param="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise OpenAIError(400, f"prompt is {len(prompt)} characters; keep it under {MAX_PROMPT_CHARS}",
                          param="prompt")
    return prompt


def completion_request(*, team_ids: list[int], body: dict, chat: bool) -> tuple[ServedModel, dict]:
    """The model and the worker's request for a chat (``chat``) or plain
    completion body; OpenAIError naming the first bad field."""
    if not body.get("model"):
        raise OpenAIError(400, "model is required; GET /v1/models lists the ids you can use", param="model")
    text = {"messages": _messages(body)} if chat else {"prompt": _prompt(body)}
    options = _options(body)
    model = served_model(team_ids=team_ids, model_id=body["model"])
    return model, {"path": model.path, "base_model": model.base_model, **text, **options}
