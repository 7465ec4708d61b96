"""Who is calling the API, in which team, and what they may do there.

Scripts send ``Authorization: Bearer <token>``. A browser's session is
accepted for reads only, so that the JSON can be looked at while logged in;
writes need a token. That is why every API view can be CSRF-exempt: a
cross-site form can ride a session cookie but cannot add a bearer header.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from django.contrib.auth.decorators import login_not_required
from axes.handlers.proxy import AxesProxyHandler
from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.template.defaultfilters import filesizeformat
from django.http import Http404, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from studio.accounts.models import ApiToken, Team
from studio.accounts.policy import Action, allows, refusal
from studio.accounts.selectors import team_ids_for_user, teams_for_user
from studio.accounts.services import api_token_authenticate
from studio.api.errors import ApiError, error_response

log = logging.getLogger(__name__)

SAFE_METHODS = ("GET", "HEAD")


@dataclass(frozen=True)
class Caller:
    user: object
    token: ApiToken | None  # None: a browser session (reads only)

    @functools.cached_property
    def team_ids(self) -> list[int]:
        """Teams whose work the caller may see: the token's team if it is
        tied to one (and the user is still in it), else all the user's teams."""
        ids = team_ids_for_user(user=self.user)
        if self.token is not None and self.token.team_id is not None:
            return [self.token.team_id] if self.token.team_id in ids else []
        return ids

    def team(self, requested) -> Team:
        """The team named by the ``team`` parameter (id or slug), else the
        token's team, else the user's first team. 404 for a team the caller
        is not in, as if it did not exist."""
        teams = [t for t in teams_for_user(user=self.user) if t.pk in self.team_ids]
        if requested in (None, ""):
            if not teams:
                raise ApiError(403, "You are not a member of any team; ask an admin to add you", field="team")
            return teams[0]
        for team in teams:
            if str(requested) in (str(team.pk), team.slug):
                return team
        raise ApiError(404, f"No team {str(requested)[:40]!r} among your teams", field="team")

    def require_writer(self, team_id: int, *, action: str) -> None:
        """403 unless the access rule lets the caller create work in the team."""
        if not allows(user=self.user, action=Action.CREATE, team_id=team_id):
            raise ApiError(403, refusal(user=self.user, action=Action.CREATE, team_id=team_id, doing=action))


# The "user name" failed token attempts are counted under (with the address).
TOKEN_CREDENTIALS = {"username": "(api token)"}


def request_caller(request) -> Caller:
    """The caller of an API request (its bearer token, or a browser session
    for reads); ApiError 401/429 when there is none."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, raw = header.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            raise ApiError(401, "Authorization must be 'Bearer <token>'")
        # Bad tokens count like failed logins (django-axes): an address that keeps guessing is locked out.
        if AxesProxyHandler.is_locked(request, credentials=TOKEN_CREDENTIALS):
            raise ApiError(429, f"Too many unknown API tokens from your address; try again in "
                                f"{settings.AXES_COOLOFF_TIME}")
        token = api_token_authenticate(raw=raw.strip())
        if token is None:
            AxesProxyHandler.user_login_failed(sender=request_caller, credentials=TOKEN_CREDENTIALS, request=request)
            request.axes_locked_out = False  # the API answers its own JSON 429 from the next request on
            raise ApiError(401, "Unknown or revoked API token")
        return Caller(user=token.user, token=token)
    if request.user.is_authenticated and request.method in SAFE_METHODS:
        return Caller(user=request.user, token=None)
    if request.user.is_authenticated:
        raise ApiError(401, "Writes need an API token (Authorization: Bearer <token>); create one on the "
                            "API tokens page")
    raise ApiError(401, "Authentication required: send Authorization: Bearer <token>")


def api_view(*methods: str):
    """Wrap a function view of the API: allowed methods, authentication,
    and every failure answered as the JSON error shape (never a stack
    trace). The view gets ``request.caller`` and returns a dict (sent as
    JSON with status 200, or 201 for a dict carrying "_status") or a response."""
    allowed = set(methods) | ({"HEAD"} if "GET" in methods else set())

    def decorate(view):
        @login_not_required
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            try:
                if request.method not in allowed:
                    response = error_response(405, f"{request.method} is not allowed here; use "
                                                   f"{' or '.join(sorted(methods))}")
                    response["Allow"] = ", ".join(sorted(allowed))
                    return response
                request.caller = request_caller(request)
                # The token's user is the request's user, so that views
                # reused from the web side (downloads) see the right teams.
                request.user = request.caller.user
                result = view(request, *args, **kwargs)
            except ApiError as exc:
                return exc.response()
            except Http404:
                return error_response(404, "Not found")
            except PermissionDenied:
                return error_response(403, "Not allowed")
            except RequestDataTooBig:  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE, checked when the body is read
                return error_response(413, f"The request body is larger than the "
                                           f"{filesizeformat(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)} limit for JSON; "
                                           f"send dataset files as multipart uploads to /api/v1/datasets")
            except Exception:
                log.exception("API %s %s failed", request.method, request.path)
                return error_response(500, "Internal error; an admin can find the details in the server log")
            if isinstance(result, HttpResponseBase):
                return result
            status = result.pop("_status", 200)
            return JsonResponse(result, status=status)

        wrapper.api_methods = tuple(sorted(methods))  # read by the OpenAPI coverage test
        return wrapper

    return decorate
