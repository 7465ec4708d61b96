"""Logging in: the password, then, for an account with two-factor on, a code
from the authenticator app or a recovery code. The session is logged in only
after both, so no page, API read or WebSocket ever sees a half-signed-in user.
The Django admin's login goes through here too (studio/urls.py). With an
identity provider set up, the page offers it; with LOCAL_PASSWORDS=false it
is the only way in, and the password steps refuse."""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.forms import AuthenticationForm
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from studio.accounts.two_factor import has_second_factor, second_factor_verify

PENDING = "login_second_factor"  # session: the user who gave the right password, waiting for their code
PENDING_FOR_S = 300


def _next(request) -> str:
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(wanted, allowed_hosts={request.get_host()},
                                       require_https=request.is_secure()):
        return wanted
    return reverse(settings.LOGIN_REDIRECT_URL)


PASSWORDS_OFF = "Passwords are turned off here: sign in through your organisation's identity provider."


def _page(request, form, *, status: int = 200, error: str = ""):
    return render(request, "accounts/login.html", {
        "form": form, "next": request.POST.get("next") or request.GET.get("next", ""), "error": error,
        "local_passwords": settings.LOCAL_PASSWORDS, "provider": settings.OIDC_PROVIDER_NAME,
        "oidc": bool(settings.OIDC_ISSUER)}, status=status)


@login_not_required
@never_cache
@require_http_methods(["GET", "POST"])
def login_view(request):
    if not settings.LOCAL_PASSWORDS:
        return _page(request, None, status=403 if request.method == "POST" else 200,
                     error=PASSWORDS_OFF if request.method == "POST" else "")
    form = AuthenticationForm(request, data=request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        user = form.get_user()
        if has_second_factor(user):
            request.session.cycle_key()
            request.session[PENDING] = {"user": user.pk, "backend": user.backend, "at": time.time(),
                                        "next": _next(request)}
            return redirect("login-code")
        login(request, user)
        return redirect(_next(request))
    return _page(request, form)  # a wrong password: 200 with the form's message, as Django's own LoginView


@login_not_required
@never_cache
@require_http_methods(["GET", "POST"])
def login_code(request):
    """The second step: a code from the app (or a recovery code) for the user the password step found."""
    pending = request.session.get(PENDING)
    if not settings.LOCAL_PASSWORDS or not pending or time.time() - pending["at"] > PENDING_FOR_S:
        request.session.pop(PENDING, None)
        return redirect("login")
    user = get_user_model().objects.filter(pk=pending["user"], is_active=True).first()
    if user is None:
        return redirect("login")
    error = ""
    if request.method == "POST":
        if second_factor_verify(user=user, code=request.POST.get("code", ""), request=request):
            del request.session[PENDING]
            login(request, user, backend=pending["backend"])
            return redirect(pending["next"])
        error = ("That code is not right (or was used already). Type the 6 digits your authenticator app "
                 "shows now, or one of your recovery codes; after several wrong tries, wait a little.")
    return render(request, "accounts/login_code.html", {"error": error},
                  status=400 if error else 200)
