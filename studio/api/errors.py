"""The API's one error shape: {"error": {"message", "field", ...}} with a
proper status code. Views raise ApiError; the api_view wrapper answers."""

from __future__ import annotations

from django.http import JsonResponse


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, field: str | None = None, errors: list[dict] | None = None,
                 **extra):
        super().__init__(message)
        self.status, self.message, self.field, self.errors, self.extra = status, message, field, errors, extra

    def response(self) -> JsonResponse:
        return error_response(self.status, self.message, field=self.field, errors=self.errors, **self.extra)


def error_response(status: int, message: str, *, field: str | None = None, errors: list[dict] | None = None,
                   **extra) -> JsonResponse:
    """``extra``: more facts a client can act on (a data file's bad row …)."""
    body = {"message": message, "field": field, **extra}
    if errors:
        body["errors"] = errors  # every bad field, when there are several
    response = JsonResponse({"error": body}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def not_found(what: str, value, *, field: str | None = None) -> ApiError:
    """The same answer for "does not exist" and "another team's": nothing leaks."""
    return ApiError(404, f"No {what} with id {value!s:.40} in your teams", field=field)
