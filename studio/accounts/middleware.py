"""REQUIRE_2FA_FOR_ADMINS: a signed-in user whom the policy holds to two-factor
(``policy.must_enrol_second_factor``) and who has not set it up reaches only
the two-factor page and logging out; every other page sends them there, and
the API refuses their browser session. A call with an API token is let
through: tokens are the scripts' path and carry no session to upgrade."""

from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import redirect
from django.urls import reverse

from studio.accounts.policy import must_enrol_second_factor
from studio.accounts.two_factor import has_second_factor

OPEN_PREFIXES = ("/static/", "/accounts/two-factor/", "/accounts/logout/", "/accounts/login/")


class SecondFactorEnrolmentMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if (user is None or not user.is_authenticated or request.path.startswith(OPEN_PREFIXES)
                or request.headers.get("Authorization", "").startswith("Bearer ")
                or not must_enrol_second_factor(user=user) or has_second_factor(user)):
            return self.get_response(request)
        message = "Set up two-factor sign-in first: this studio requires it for admins (your account page)"
        if request.path.startswith("/api/"):
            return JsonResponse({"error": {"message": message, "field": None}}, status=403)
        return redirect(reverse("two-factor") + "?required=1")
