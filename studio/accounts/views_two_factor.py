"""The two-factor page: set up an authenticator app (QR code or secret, then a
code from it), see how many recovery codes are left, renew them, or turn
two-factor off. Every action here needs a current code, except starting the
set-up. A user's sign-in settings are their own alone (``policy``); the page
names no one else. Recovery codes are shown in one response only."""

from __future__ import annotations

from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from studio.accounts.policy import must_enrol_second_factor
from studio.accounts.two_factor import (enrolment_confirm, enrolment_pending, enrolment_qr_svg, enrolment_secret,
                                        enrolment_start, has_second_factor, recovery_codes_left,
                                        recovery_codes_renew, second_factor_disable)

WRONG_CODE = "That code is not right (or was used already); type the 6 digits your app shows now."


@never_cache  # no-store: the page may hold the secret or recovery codes
def two_factor_page(request, *, error: str = "", codes: list[str] | None = None, status: int = 200):
    user = request.user
    pending = None if has_second_factor(user) else enrolment_pending(user)
    return render(request, "accounts/two_factor.html", {
        "enabled": has_second_factor(user), "required": must_enrol_second_factor(user=user),
        "local_password": user.has_usable_password(), "pending": pending,
        "qr_svg": enrolment_qr_svg(pending) if pending else "", "secret": enrolment_secret(pending) if pending else "",
        "codes": codes, "codes_left": recovery_codes_left(user), "error": error,
    }, status=status)


@require_POST
def two_factor_start(request):
    if not request.user.has_usable_password():
        return two_factor_page(request, error="Your account signs in through the identity provider; "
                                              "set up two-factor there.", status=400)
    if has_second_factor(request.user):  # a new phone: turn it off first, which needs a current code
        return two_factor_page(request, error="Two-factor is on already; to move it to another app, turn it off "
                                              "(with a current code) and set it up again.", status=409)
    enrolment_start(user=request.user)
    return redirect("two-factor")


def _show_new_codes(request, make_codes):
    """The page with the recovery codes ``make_codes`` gave for the posted code, or why not."""
    codes = make_codes(user=request.user, code=request.POST.get("code", ""), request=request)
    if codes is None:
        return two_factor_page(request, error=WRONG_CODE, status=400)
    return two_factor_page(request, codes=codes)


@require_POST
def two_factor_confirm(request):
    return _show_new_codes(request, enrolment_confirm)


@require_POST
def two_factor_recovery_codes(request):
    return _show_new_codes(request, recovery_codes_renew)


@require_POST
def two_factor_disable(request):
    if must_enrol_second_factor(user=request.user):
        return two_factor_page(request, error="This studio requires two-factor for admins; it cannot be turned "
                                              "off while you are one.", status=403)
    if not second_factor_disable(user=request.user, code=request.POST.get("code", ""), request=request):
        return two_factor_page(request, error=WRONG_CODE, status=400)
    return redirect("two-factor")
