"""Reading a request's JSON body, every failure a 400 naming what is wrong."""

from __future__ import annotations

import json

from studio.api.errors import ApiError


def json_body(request) -> dict:
    try:
        body = json.loads(request.body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"The body must be a JSON object ({exc})") from None
    except RecursionError:
        raise ApiError(400, "The body must be a JSON object; this one is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object")
    return body
