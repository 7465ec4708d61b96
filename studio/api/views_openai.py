"""/v1/: an OpenAI-compatible endpoint for the models a team made (and the
base models it may use), so that any OpenAI client or tool can talk to them:
``OpenAI(base_url="http://studio/v1", api_key=<studio API token>)``.

The views are async: each request waits on the channel layer for the
playground worker's pieces (worker/serving.py) without holding a thread,
and streams them as server-sent events when asked to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.core.exceptions import RequestDataTooBig
from django.http import JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError

from studio.api.auth import request_caller
from studio.api.errors import ApiError
from studio.api.serving import SERVE_TASK, OpenAIError, ServedModel, completion_request, served_model, served_models

# How long to wait for the worker's next message. The first one may wait for
# a model to load, or behind another chat on the one playground worker.
REPLY_WAIT_S = 300
QUEUED_EXPIRY_S = 120  # a request still queued after this has lost its asker (as the playground's)
# Redis down: queueing the request (Celery's broker) or waiting for the worker's pieces (the channel layer).
UNREACHABLE = (BrokerError, RedisError)
log = logging.getLogger(__name__)


def _unreachable(exc: Exception) -> OpenAIError:
    """A 503 a client may retry (OpenAI's clients do, by themselves), rather than a bare 500."""
    log.warning("/v1/: Redis is not reachable (%s: %s)", type(exc).__name__, exc)
    return OpenAIError(503, "The studio cannot reach Redis, which carries requests to the playground worker and "
                            "its replies back; try again in a moment. If this lasts, an admin can check that Redis "
                            "runs (REDIS_URL).")


def openai_view(*methods: str):
    """An async view answering OpenAI's error shape, never a stack trace."""

    def decorate(view):
        @login_not_required
        @csrf_exempt
        async def wrapper(request, *args, **kwargs):
            if request.method not in methods:
                return OpenAIError(405, f"{request.method} is not allowed here; use {' or '.join(methods)}").response()
            try:
                team_ids = await sync_to_async(_team_ids)(request)
                return await view(request, team_ids, *args, **kwargs)
            except ApiError as exc:
                return OpenAIError.from_api_error(exc).response()
            except OpenAIError as exc:
                return exc.response()
            except RequestDataTooBig:
                return OpenAIError(413, "The request body is too large").response()
            except UNREACHABLE as exc:
                return _unreachable(exc).response()

        wrapper.api_methods = methods
        return wrapper

    return decorate


def _team_ids(request) -> list[int]:
    """The caller's teams, in one trip to the thread that may use the database."""
    return request_caller(request).team_ids


def _model_json(model: ServedModel) -> dict:
    return {"id": model.id, "object": "model", "created": model.created, "owned_by": model.owned_by}


@openai_view("GET")
async def models_list(request, team_ids):
    models = await sync_to_async(served_models)(team_ids=team_ids)
    return JsonResponse({"object": "list", "data": [_model_json(m) for m in models]})


@openai_view("GET")
async def model_retrieve(request, team_ids, model_id: str):
    return JsonResponse(_model_json(await sync_to_async(served_model)(team_ids=team_ids, model_id=model_id)))


def _body(request) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise OpenAIError(400, f"The body must be a JSON object ({exc})") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "The body must be a JSON object")
    return body


async def _replies(channel: str):
    """The worker's messages on ``channel``, up to its done or error message (read after the view returned
    when streaming: its errors are OpenAIErrors, which the stream sends as an event)."""
    layer = get_channel_layer()
    while True:
        try:
            message = await asyncio.wait_for(layer.receive(channel), REPLY_WAIT_S)
        except TimeoutError:
            raise OpenAIError(504, f"The playground worker did not answer within {REPLY_WAIT_S} s; check that it "
                                   f"runs (the workers page lists it)") from None
        except UNREACHABLE as exc:
            raise _unreachable(exc) from None
        yield message
        if message["type"] != "serving.piece":
            return


class Completion:
    """One request's answer in OpenAI's shapes, chat or plain completion."""

    def __init__(self, model: ServedModel, chat: bool):
        self.model, self.chat, self.created = model, chat, int(time.time())
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"

    def _envelope(self, choices: list, obj: str, **extra) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model.id, "choices": choices,
                **extra}

    @staticmethod
    def usage(done: dict) -> dict:
        return {"prompt_tokens": done["prompt_tokens"], "completion_tokens": done["completion_tokens"],
                "total_tokens": done["prompt_tokens"] + done["completion_tokens"]}

    def whole(self, text: str, done: dict) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": done["finish_reason"]}
            return self._envelope([choice], "chat.completion", usage=self.usage(done))
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": done["finish_reason"]}
        return self._envelope([choice], "text_completion", usage=self.usage(done))

    def chunk(self, text: str | None, finish_reason: str | None = None, *, first: bool = False) -> dict:
        if self.chat:
            delta = ({"role": "assistant", "content": ""} if first else {} if text is None else {"content": text})
            return self._envelope([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                                  "chat.completion.chunk")
        return self._envelope([{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}],
                              "text_completion")

    def usage_chunk(self, done: dict) -> dict:
        return self._envelope([], "chat.completion.chunk" if self.chat else "text_completion",
                              usage=self.usage(done))


def _sse(data: dict | str) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n".encode()


async def _events(answer: Completion, channel: str, include_usage: bool):
    """The reply as server-sent events, ending in ``data: [DONE]``; an error
    after the stream began is sent as an event in OpenAI's error shape."""
    if answer.chat:
        yield _sse(answer.chunk(None, first=True))
    try:
        async for message in _replies(channel):
            if message["type"] == "serving.piece":
                yield _sse(answer.chunk(message["text"]))
            elif message["type"] == "serving.error":
                yield _sse(OpenAIError(500, message["message"]).body())
                return
            else:
                yield _sse(answer.chunk(None, message["finish_reason"]))
                if include_usage:
                    yield _sse(answer.usage_chunk(message))
    except OpenAIError as exc:
        yield _sse(exc.body())
        return
    yield _sse("[DONE]")


def _queue_completion(*, team_ids: list[int], body: dict, chat: bool, channel: str) -> tuple[ServedModel, dict]:
    """Check the request and send it to the playground's worker (one thread hop for both: a hop is a
    wait on the thread that may use the database, and it is time before the first token)."""
    from studio.celery import app

    model, work = completion_request(team_ids=team_ids, body=body, chat=chat)
    app.send_task(SERVE_TASK, queue=settings.PLAYGROUND_QUEUE, expires=QUEUED_EXPIRY_S, args=[channel, work])
    return model, work


async def _complete(request, team_ids, *, chat: bool):
    channel = await get_channel_layer().new_channel()
    model, work = await sync_to_async(_queue_completion)(team_ids=team_ids, body=_body(request), chat=chat,
                                                         channel=channel)
    answer = Completion(model, chat)
    if work["stream"]:
        response = StreamingHttpResponse(_events(answer, channel, work["include_usage"]),
                                         content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # a proxy in front must pass each event on at once
        return response
    text = []
    async for message in _replies(channel):
        if message["type"] == "serving.piece":
            text.append(message["text"])
        elif message["type"] == "serving.error":
            raise OpenAIError(500, message["message"])
        else:
            return JsonResponse(answer.whole("".join(text), message))


@openai_view("POST")
async def chat_completions(request, team_ids):
    return await _complete(request, team_ids, chat=True)


@openai_view("POST")
async def completions(request, team_ids):
    return await _complete(request, team_ids, chat=False)


@login_not_required
@csrf_exempt
def not_found(request, rest: str = ""):
    return OpenAIError(404, f"No endpoint {request.path[:200]}; this studio serves /v1/models, "
                            f"/v1/chat/completions and /v1/completions").response()
