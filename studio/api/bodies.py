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


def refuse_unknown(body: dict, known: set[str], prefix: str = "") -> None:
    """400 naming the first field the endpoint does not take (a typo would
    otherwise be ignored); ``prefix``: where ``body`` sits in the request."""
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(400, f"Unknown fields {unknown} in {prefix.rstrip('.') or 'the body'}; known: {sorted(known)}",
                       field=prefix + unknown[0])


def form_error(form, prefix: str = "", strip: str = "") -> ApiError:
    """A page's form's errors as the API's 400: each field as the request names
    it (``prefix`` + the form field's name less ``strip``)."""
    errors = [{"field": prefix + name.removeprefix(strip) if name != "__all__" else prefix.rstrip(".") or "body",
               "message": " ".join(messages)} for name, messages in form.errors.items()]
    return ApiError(400, "; ".join(f"{e['field']}: {e['message']}" for e in errors), field=errors[0]["field"],
                    errors=errors)
