"""The OpenAPI paths of the OpenAI-compatible endpoint (/v1/, urls_openai.py),
merged into openapi.py's document. They live beside /api/v1 but under
another root, so each path item carries its own ``servers`` entry."""

from __future__ import annotations

from studio.api.serving import DEFAULT_MAX_TOKENS, MAX_STOPS
from studio.artifacts.playground import LIMITS, MAX_PROMPT_CHARS

OPENAI_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "properties": {
    "message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
    "code": {"type": ["string", "null"], "description": "model_not_found, invalid_api_key …"}}}}}

USAGE = {"type": "object", "properties": {name: {"type": "integer"} for name in (
    "prompt_tokens", "completion_tokens", "total_tokens")}}

SAMPLING = {
    "model": {"type": "string", "description": "An id from GET /v1/models: artifact-<id> or base-<id>."},
    "max_tokens": {"type": "integer", "minimum": LIMITS["max_new_tokens"][0], "maximum": LIMITS["max_new_tokens"][1],
                   "default": DEFAULT_MAX_TOKENS},
    "max_completion_tokens": {"type": "integer", "description": "OpenAI's newer name for max_tokens."},
    "temperature": {"type": "number", "minimum": LIMITS["temperature"][0], "maximum": LIMITS["temperature"][1],
                    "default": 1.0, "description": "0: greedy, the same reply every time."},
    "top_p": {"type": "number", "minimum": LIMITS["top_p"][0], "maximum": LIMITS["top_p"][1], "default": 1.0},
    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOPS}],
             "description": "The reply ends before the first of these."},
    "n": {"const": 1},
    "stream": {"type": "boolean", "default": False,
               "description": "Server-sent events (`data: {chunk}`), ending with `data: [DONE]`."},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
}

CHAT_BODY = {"type": "object", "required": ["model", "messages"], "properties": {
    "messages": {"type": "array", "minItems": 1, "description": (
        f"The conversation, through the model's chat template; at most {MAX_PROMPT_CHARS} characters in all."),
        "items": {"type": "object", "required": ["role", "content"], "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant"]},
            "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {
                "type": "object", "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]}}}},
    **SAMPLING}}

COMPLETION_BODY = {"type": "object", "required": ["model", "prompt"], "properties": {
    "prompt": {"type": "string", "maxLength": MAX_PROMPT_CHARS, "description": "Plain text, no chat template."},
    **SAMPLING}}

MODEL = {"type": "object", "properties": {"id": {"type": "string"}, "object": {"const": "model"},
                                          "created": {"type": "integer"}, "owned_by": {"type": "string"}}}

CHOICE_END = {"finish_reason": {"enum": ["stop", "length", None],
                                "description": "length: cut off by max_tokens; stop: ended or reached a stop string"}}
CHAT = {"type": "object", "properties": {
    "id": {"type": "string"}, "object": {"enum": ["chat.completion", "chat.completion.chunk"]},
    "created": {"type": "integer"}, "model": {"type": "string"}, "usage": USAGE,
    "choices": {"type": "array", "items": {"type": "object", "properties": {
        "index": {"type": "integer"}, "message": {"type": "object"}, "delta": {"type": "object"}, **CHOICE_END}}}}}
COMPLETION = {"type": "object", "properties": {
    "id": {"type": "string"}, "object": {"const": "text_completion"}, "created": {"type": "integer"},
    "model": {"type": "string"}, "usage": USAGE,
    "choices": {"type": "array", "items": {"type": "object", "properties": {
        "index": {"type": "integer"}, "text": {"type": "string"}, **CHOICE_END}}}}}


def _answer(schema: dict, description: str, *, stream: bool = False) -> dict:
    content = {"application/json": {"schema": schema}}
    if stream:
        content["text/event-stream"] = {"schema": {"type": "string", "description": "data: <chunk>, then [DONE]"}}
    return {"description": description, "content": content}


def _errors(*codes: int) -> dict:
    words = {400: "A bad field (error.param names it)", 401: "No token, or an unknown or revoked one",
             404: "model_not_found: no such model, or another team's", 504: "The playground worker did not answer"}
    return {str(code): {"description": words[code], "content": {"application/json": {"schema": OPENAI_ERROR}}}
            for code in codes}


def _op(op_id: str, summary: str, ok: dict, errors: tuple, *, body: dict | None = None, params=()) -> dict:
    op = {"operationId": op_id, "summary": summary, "tags": ["OpenAI-compatible"], "parameters": list(params),
          "responses": {"200": ok, **_errors(*errors)}}
    if body:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def openai_paths(*, origin: str) -> dict:
    """Path items for /v1/…, served from ``origin`` (the studio's root URL)."""
    servers = [{"url": origin, "description": "The studio's root: the OpenAI client's base_url is <root>/v1"}]
    model_id = {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"},
                "description": "artifact-<id> or base-<id>"}
    return {
        "/v1/models": {"servers": servers, "get": _op(
            "openaiListModels", "Models you can chat with: your teams' artifacts and base models",
            _answer({"type": "object", "properties": {"object": {"const": "list"},
                                                      "data": {"type": "array", "items": MODEL}}}, "The models"),
            (401,))},
        "/v1/models/{model_id}": {"servers": servers, "get": _op(
            "openaiRetrieveModel", "One model", _answer(MODEL, "The model"), (401, 404), params=[model_id])},
        "/v1/chat/completions": {"servers": servers, "post": _op(
            "openaiChatCompletion", "A chat reply (OpenAI's chat completions), whole or streamed",
            _answer(CHAT, "chat.completion, or chat.completion.chunk events when stream is true", stream=True),
            (400, 401, 404, 504), body=CHAT_BODY)},
        "/v1/completions": {"servers": servers, "post": _op(
            "openaiCompletion", "A continuation of plain text (OpenAI's legacy completions)",
            _answer(COMPLETION, "text_completion, or its chunks when stream is true", stream=True),
            (400, 401, 404, 504), body=COMPLETION_BODY)},
    }
